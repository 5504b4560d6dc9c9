//! Planner table tests: one per decision reason and edge.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::config::{self, secret_ref::Env};

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
    let views = assign_lineages(p, keys, &[], rotations);
    let targets = vec![(
        "f".to_string(),
        Some(TargetTemplate::parse("/tmp/{lineage}.env").unwrap()),
    )];
    plan(p, views, rotations, &HashMap::new(), &targets, now())
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
fn keys_rekey_created_rejoin_their_lineage_by_name() {
    let p = policy(r#"max_age = "30d""#);
    let plan = plan_keys(
        &p,
        vec![
            key("app-main", Duration::days(40), None),
            key("app-main-20261120-r0badf00d-1", Duration::days(2), None),
        ],
    );
    let l = only(&plan);
    assert_eq!(l.name, "app-main");
    assert_eq!(
        l.current.as_ref().unwrap().key.name,
        "app-main-20261120-r0badf00d-1"
    );
    assert_eq!(l.keys[1].1, KeyState::Stale);
    assert_eq!(l.decision.reason, Reason::Fresh);
}

#[test]
fn a_crashed_attempts_key_is_never_current() {
    let p = policy(r#"max_age = "30d""#);
    let keys = vec![
        key("app-main", Duration::days(40), None),
        key("app-main-20261122-r0badf00d-1", Duration::minutes(1), None),
    ];
    let views = assign_lineages(&p, keys, &[], &[]);
    let mut attempts = HashMap::new();
    attempts.insert(
        "0badf00d".to_string(),
        vec![AttemptRow {
            attempt: 1,
            name: "app-main-20261122-r0badf00d-1".into(),
            state: "abandoned".into(),
            started_at: now(),
            finished_at: None,
            error: None,
        }],
    );
    let plan = plan(&p, views, &[], &attempts, &[], now());
    let l = only(&plan);
    assert_eq!(l.current.as_ref().unwrap().key.name, "app-main");
    assert_eq!(l.decision.reason, Reason::MaxAge);
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
        &[],
        &[],
    );
    let targets = vec![(
        "fixed".to_string(),
        Some(TargetTemplate::parse("/tmp/one.env").unwrap()),
    )];
    let plan = plan(&p, views, &[], &HashMap::new(), &targets, now());
    assert_eq!(plan.health, Health::Misconfigured);
    assert!(plan.misconfigured.as_ref().unwrap().contains("fixed"));
    assert_eq!(plan.due().count(), 0);
}
