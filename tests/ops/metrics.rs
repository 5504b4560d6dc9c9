//! Metrics as Prometheus tooling reads them: a text-format parser, and
//! `promtool check metrics` (which must report nothing).

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::Utc;
use prometheus_parse::{LineInfo, SampleType, Scrape, Value};
use rekey::metrics::Metrics;

use super::ops_snapshot;
use crate::support::require_tool;

/// Metrics as a running daemon would have them: two policies initialised,
/// their keys synced, some provider calls and sink publications counted.
fn populated_metrics() -> Metrics {
    let m = Metrics::new();
    let snapshot = ops_snapshot(Utc::now());
    m.init_policy("maas-prod", &["app-env".into(), "vault".into()], "ob-prod");
    m.init_policy("gw", &["app-env".into()], "tencent");
    for p in &snapshot.policies {
        m.sync_policy(p);
    }
    m.count_rotation("maas-prod", "completed");
    m.set_last_success("maas-prod", Utc::now().timestamp() as f64);
    m.provider_requests
        .with_label_values(&["ob-prod", "list", "200"])
        .inc_by(3);
    m.provider_requests
        .with_label_values(&["tencent", "create", "403"])
        .inc();
    m.provider_duration
        .with_label_values(&["ob-prod", "list"])
        .observe(0.042);
    m.sink_publish.with_label_values(&["app-env", "ok"]).inc();
    m.outbox_depth.with_label_values(&["ops"]).set(2.0);
    m.dead_letters.with_label_values(&["ops"]).set(1.0);
    m
}

#[test]
fn metrics_parse_with_a_prometheus_text_parser() {
    let text = populated_metrics().render();
    // The parser is lenient (what it cannot read it ignores), so check
    // line by line that it read everything, and read it as we meant.
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } => {}
            LineInfo::Type { sample_type, .. } => {
                assert_ne!(sample_type, SampleType::Untyped, "{line:?}")
            }
            LineInfo::Sample { value, .. } => {
                assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}")
            }
            LineInfo::Empty | LineInfo::Ignored => {
                panic!("line the parser does not understand: {line:?}")
            }
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{text}"))
    };
    for family in [
        "rekey_key_expiry_timestamp_seconds",
        "rekey_key_created_timestamp_seconds",
        "rekey_rotations_total",
        "rekey_last_success_timestamp_seconds",
        "rekey_policy_healthy",
        "rekey_provider_requests_total",
        "rekey_provider_request_duration_seconds",
        "rekey_sink_publish_total",
    ] {
        assert!(
            scrape.docs.get(family).is_some_and(|h| !h.is_empty()),
            "{family} has no HELP"
        );
    }
    assert!(matches!(
        sample("rekey_rotations_total", &[("policy", "maas-prod"), ("result", "completed")]).value,
        Value::Counter(v) if v == 1.0
    ));
    assert!(matches!(
        sample("rekey_rotations_total", &[("policy", "gw"), ("result", "failed")]).value,
        Value::Counter(v) if v == 0.0
    ));
    assert!(matches!(
        sample("rekey_policy_healthy", &[("policy", "gw")]).value,
        Value::Gauge(v) if v == 0.0
    ));
    assert!(matches!(
        sample("rekey_policy_healthy", &[("policy", "maas-prod")]).value,
        Value::Gauge(v) if v == 1.0
    ));
    let expiry = sample(
        "rekey_key_expiry_timestamp_seconds",
        &[
            ("policy", "maas-prod"),
            ("lineage", "app-main"),
            ("key", "app-main-20261122-r0001a1"),
        ],
    );
    assert!(matches!(expiry.value, Value::Gauge(v) if v > Utc::now().timestamp() as f64));
    assert!(matches!(
        sample("rekey_sink_publish_total", &[("sink", "vault"), ("result", "error")]).value,
        Value::Counter(v) if v == 0.0
    ));
    assert!(matches!(
        sample(
            "rekey_provider_request_duration_seconds",
            &[("provider", "ob-prod")]
        )
        .value,
        Value::Histogram(_)
    ));
    // Tencent keys have no expiry, so no expiry series, but a created one.
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| s.metric == "rekey_key_expiry_timestamp_seconds"
                && s.labels.get("policy") == Some("gw"))
    );
    sample(
        "rekey_key_created_timestamp_seconds",
        &[("policy", "gw"), ("key", "svc-a")],
    );
}

#[test]
fn promtool_check_metrics_reports_nothing() {
    let Some(promtool) = require_tool("promtool", "lints the /metrics output") else {
        return;
    };
    for (what, text) in [
        ("empty registry", Metrics::new().render()),
        ("populated registry", populated_metrics().render()),
    ] {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool on the {what} (exit {:?}):\n{report}\n--- metrics ---\n{text}",
            out.status.code()
        );
    }
}

/// The shipped alerting rules (contrib/prometheus/rekey-rules.yml) load in
/// Prometheus, and their unit tests (which alert fires on which series)
/// pass.
#[test]
fn shipped_prometheus_rules_load_and_fire_on_rekey_series() {
    let Some(promtool) = require_tool("promtool", "checks contrib/prometheus/rekey-rules.yml")
    else {
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus");
    for args in [
        ["check", "rules", "rekey-rules.yml"],
        ["test", "rules", "rekey-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {} (exit {:?}):\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every stuck condition of DESIGN §4 has an alert of its own.
    let rules = std::fs::read_to_string(format!("{dir}/rekey-rules.yml")).unwrap();
    for condition in [
        "step_failing",
        "rotation_stuck",
        "retire_failing",
        "key_expired",
        "conflict",
        "unrecognised_key",
        "unsafe_name",
        "unknown_time",
        "next_key_missing",
        "cleanup_stuck",
    ] {
        assert!(
            rules.contains(&format!(
                "rekey_condition{{condition=\"{condition}\"}} == 1"
            )),
            "no alert on condition {condition}"
        );
    }
}
