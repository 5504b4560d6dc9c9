//! Prometheus metrics (DESIGN §4), in a registry owned by the daemon rather
//! than a process global, so tests can run several daemons in one process.
//! Rendered in the classic text format (what `promtool check metrics` reads);
//! every family has HELP and TYPE.
//!
//! Series lifecycle: [`Metrics::init_policy`] makes every per-policy and
//! per-sink series exist at zero from start-up (so `rate()` and absence
//! alerts work before the first rotation), [`Metrics::sync_policy`] /
//! [`Metrics::sync_keys`] mirror a policy's published status, and
//! [`Metrics::remove_policy`] drops a policy's series after a reload removed
//! it. The `key` label is the key's *name* (what an operator recognises in
//! an alert), never anything secret.
//!
//! Per-policy and per-key series are not prometheus vectors: they are held
//! as compact rows (`PolicyRow`, the published status's key table) and
//! rendered by custom collectors at scrape time, with the names, HELP,
//! TYPE, labels and values the vectors rendered (a vector child costs
//! ~450 bytes, ~20 per policy).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::rotation::health::Condition;
use crate::rotation::report::{KeyStatus, Keys, PolicyStatus};

/// `result` label values of `rekey_rotations_total`.
pub const ROTATION_RESULTS: [&str; 2] = ["completed", "failed"];
/// `step` label values of `rekey_step_failures_total`.
pub const STEPS: [&str; 5] = ["create", "find_id", "prepare", "publish", "retire"];
/// `result` label values of `rekey_sink_publish_total`.
pub const PUBLISH_RESULTS: [&str; 2] = ["ok", "error"];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Per-key expiry/creation times, rendered by [`KeyCollector`] at
    /// scrape time: one compact row per key instead of a metric child (with
    /// its own label strings) per key and family.
    keys: KeySeries,
    /// Per-policy series (`rekey_rotations_total`,
    /// `rekey_last_success_timestamp_seconds`, `rekey_policy_healthy`,
    /// `rekey_condition`, `rekey_oldest_unfinished_rotation_age_seconds`,
    /// `rekey_step_failures_total`), rendered by [`PolicyCollector`]: one
    /// compact row per policy instead of ~20 metric children (each with its
    /// own label strings) per policy.
    policy: PolicySeries,
    pub provider_requests: IntCounterVec,
    pub provider_duration: HistogramVec,
    pub sink_publish: IntCounterVec,
    /// `rekey_provider_walks_total{provider,purpose}`: complete key walks
    /// started (a shared walk counts once, for the consumer that started
    /// it); purpose ∈ check, id_lookup, attempt, before_delete.
    pub provider_walks: IntCounterVec,
    /// `rekey_provider_rotations_total{provider,result}`: rotations
    /// finished per provider entry, the denominator of calls per rotation
    /// (DESIGN §4).
    pub provider_rotations: IntCounterVec,
    /// `rekey_build_info{version}`, always 1.
    pub build_info: GaugeVec,
    /// `rekey_outbox_depth{target}`: events a notification target has not
    /// received yet.
    pub outbox_depth: GaugeVec,
    /// `rekey_dead_letters{target}`: events a target never accepted.
    pub dead_letters: GaugeVec,
    /// `rekey_leader`: 1 while this node may act (it holds the PostgreSQL
    /// lease, or the state is SQLite), else 0 (DESIGN §8).
    pub leader: IntGauge,
    /// `rekey_leadership_transitions_total`: times this process became
    /// leader or stopped being one.
    pub leadership_transitions: IntCounter,
    /// `rekey_fenced_commits_total`: state commits refused because the
    /// fence moved on (a newer leader exists).
    pub fenced_commits: IntCounter,
    /// `rekey_sink_token_rejections_total{sink}`: sink writes refused
    /// because the target holds a newer fence token.
    pub sink_token_rejections: IntCounterVec,
    /// `rekey_leadership_refused{reason}`: 1 while this node refuses to
    /// lead, by reason (`config_digest`, `seal_key`).
    pub leadership_refused: GaugeVec,
    /// Which provider and sinks each initialised policy uses, so removing a
    /// policy also drops the sink and provider series nothing else uses.
    policies: Arc<Mutex<BTreeMap<String, PolicyRefs>>>,
}

#[derive(Debug, Clone)]
struct PolicyRefs {
    provider: String,
    sinks: Vec<String>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let keys = KeySeries::default();
        let policy = PolicySeries::default();
        let provider_requests = IntCounterVec::new(
            Opts::new(
                "rekey_provider_requests_total",
                "Provider API calls, by operation and HTTP status code (or error class).",
            ),
            &["provider", "operation", "code"],
        )
        .expect("metric");
        let provider_duration = HistogramVec::new(
            HistogramOpts::new(
                "rekey_provider_request_duration_seconds",
                "Provider API call latency in seconds.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["provider", "operation"],
        )
        .expect("metric");
        let sink_publish = IntCounterVec::new(
            Opts::new(
                "rekey_sink_publish_total",
                "Sink publications, by result (ok or error).",
            ),
            &["sink", "result"],
        )
        .expect("metric");
        let provider_walks = IntCounterVec::new(
            Opts::new(
                "rekey_provider_walks_total",
                "Complete walks of a provider's key list started, by what needed them (a walk shared by several consumers counts once).",
            ),
            &["provider", "purpose"],
        )
        .expect("metric");
        let provider_rotations = IntCounterVec::new(
            Opts::new(
                "rekey_provider_rotations_total",
                "Rotations finished, by provider entry and result (completed or failed): divide provider requests by it for calls per rotation.",
            ),
            &["provider", "result"],
        )
        .expect("metric");
        let build_info = GaugeVec::new(
            Opts::new("rekey_build_info", "Always 1; the running rekey's version."),
            &["version"],
        )
        .expect("metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let outbox_depth = GaugeVec::new(
            Opts::new(
                "rekey_outbox_depth",
                "Events not yet delivered to the notification target.",
            ),
            &["target"],
        )
        .expect("metric");
        let dead_letters = GaugeVec::new(
            Opts::new(
                "rekey_dead_letters",
                "Events the notification target never accepted after every retry.",
            ),
            &["target"],
        )
        .expect("metric");
        let leader = IntGauge::new(
            "rekey_leader",
            "1 while this node may act: it holds the PostgreSQL lease, or its state is SQLite (one node); 0 on a standby.",
        )
        .expect("metric");
        let leadership_transitions = IntCounter::new(
            "rekey_leadership_transitions_total",
            "Times this process became leader or stopped being one (PostgreSQL state).",
        )
        .expect("metric");
        let fenced_commits = IntCounter::new(
            "rekey_fenced_commits_total",
            "State commits refused because the lease's fence moved on to a newer leader.",
        )
        .expect("metric");
        let sink_token_rejections = IntCounterVec::new(
            Opts::new(
                "rekey_sink_token_rejections_total",
                "Sink writes refused because the target holds a newer leader's fence token.",
            ),
            &["sink"],
        )
        .expect("metric");
        let leadership_refused = GaugeVec::new(
            Opts::new(
                "rekey_leadership_refused",
                "1 while this node refuses to lead, by reason (config_digest: its config differs from the lease row's; seal_key: its seal key differs from the database's check value).",
            ),
            &["reason"],
        )
        .expect("metric");
        for c in [
            Box::new(KeyCollector::new(keys.clone())) as Box<dyn prometheus::core::Collector>,
            Box::new(PolicyCollector::new(policy.clone())),
            Box::new(leader.clone()),
            Box::new(leadership_transitions.clone()),
            Box::new(fenced_commits.clone()),
            Box::new(sink_token_rejections.clone()),
            Box::new(leadership_refused.clone()),
            Box::new(build_info.clone()),
            Box::new(outbox_depth.clone()),
            Box::new(dead_letters.clone()),
            Box::new(provider_requests.clone()),
            Box::new(provider_duration.clone()),
            Box::new(sink_publish.clone()),
            Box::new(provider_walks.clone()),
            Box::new(provider_rotations.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            keys,
            policy,
            provider_requests,
            provider_duration,
            sink_publish,
            provider_walks,
            provider_rotations,
            build_info,
            outbox_depth,
            dead_letters,
            leader,
            leadership_transitions,
            fenced_commits,
            sink_token_rejections,
            leadership_refused,
            policies: Arc::default(),
        }
    }

    /// Make every series of a policy and of its sinks exist (at zero, or
    /// keeping its value when the policy was already initialised, as after a
    /// reload): `rekey_rotations_total{result="completed"|"failed"}`,
    /// `rekey_last_success_timestamp_seconds` (0 = never),
    /// `rekey_policy_healthy` (0 until the first check says otherwise) and
    /// `rekey_sink_publish_total{result="ok"|"error"}` per sink. Provider
    /// series are labelled by operation and status code, known only once a
    /// call is made, so they are not pre-created; the provider is recorded
    /// so [`Metrics::remove_policy`] can drop its series when no policy uses
    /// it any more.
    pub fn init_policy(&self, policy: &str, sinks: &[String], provider: &str) {
        self.policy
            .update(policy, |row| row.present |= PolicyRow::ALL_SERIES);
        for sink in sinks {
            for result in PUBLISH_RESULTS {
                self.sink_publish
                    .with_label_values(&[sink.as_str(), result]);
            }
            self.sink_token_rejections
                .with_label_values(&[sink.as_str()]);
        }
        for result in ROTATION_RESULTS {
            self.provider_rotations
                .with_label_values(&[provider, result]);
        }
        self.refs().insert(
            policy.to_string(),
            PolicyRefs {
                provider: provider.to_string(),
                sinks: sinks.to_vec(),
            },
        );
    }

    /// Mirror one policy's published status: `rekey_policy_healthy`, and
    /// the key gauges, rendered at scrape time from this very status (the
    /// one the status endpoint serves: per-key data is held once).
    pub fn sync_policy(&self, status: &Arc<PolicyStatus>) {
        let mut held = 0;
        for (i, c) in Condition::ALL.iter().enumerate() {
            if status.lineages.iter().any(|l| l.conditions().contains(c)) {
                held |= 1 << i;
            }
        }
        self.policy.update(&status.name, |row| {
            row.present |= PolicyRow::HEALTHY | PolicyRow::CONDITIONS;
            row.healthy = if status.health.is_healthy() { 1.0 } else { 0.0 };
            row.conditions_held = held;
        });
        let mut map = self.keys.0.write().unwrap_or_else(|p| p.into_inner());
        if status.keys.is_empty() {
            map.remove(&status.name);
        } else {
            map.insert(status.name.clone(), KeyRows::Shared(status.clone()));
        }
    }

    /// Set `rekey_key_expiry_timestamp_seconds` and
    /// `rekey_key_created_timestamp_seconds` for each of the policy's live
    /// keys (a key without an expiry, as on Tencent and Huawei, has no
    /// expiry series), and remove the series of keys no longer listed.
    pub fn sync_keys(&self, policy: &str, keys: &[KeyStatus]) {
        let mut map = self.keys.0.write().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            map.remove(policy);
        } else {
            map.insert(policy.to_string(), KeyRows::Own(keys.iter().collect()));
        }
    }

    /// Drop every series of a policy that is gone from the config, and the
    /// series of its sinks and provider when no remaining policy uses them.
    pub fn remove_policy(&self, policy: &str) {
        self.policy.write().remove(policy);
        self.keys
            .0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(policy);

        let mut refs = self.refs();
        let Some(gone) = refs.remove(policy) else {
            return;
        };
        for sink in &gone.sinks {
            if !refs.values().any(|r| r.sinks.contains(sink)) {
                for result in PUBLISH_RESULTS {
                    let _ = self
                        .sink_publish
                        .remove_label_values(&[sink.as_str(), result]);
                }
                let _ = self
                    .sink_token_rejections
                    .remove_label_values(&[sink.as_str()]);
            }
        }
        if !refs.values().any(|r| r.provider == gone.provider) {
            remove_where(&self.provider_requests, "provider", &gone.provider);
            remove_where(&self.provider_duration, "provider", &gone.provider);
            remove_where(&self.provider_walks, "provider", &gone.provider);
            remove_where(&self.provider_rotations, "provider", &gone.provider);
        }
    }

    /// Count a finished rotation of `policy` in `rekey_rotations_total`;
    /// `result` is one of [`ROTATION_RESULTS`].
    pub fn count_rotation(&self, policy: &str, result: &str) {
        self.count(
            policy,
            (&ROTATION_RESULTS, result),
            PolicyRow::ROTATIONS,
            |row| &mut row.rotations,
        );
    }

    /// `rekey_rotations_total{policy,result}` as counted so far (0 when the
    /// series does not exist).
    pub fn rotations_total(&self, policy: &str, result: &str) -> u64 {
        let Some(i) = label_index(&ROTATION_RESULTS, result) else {
            return 0;
        };
        self.policy
            .read()
            .get(policy)
            .map_or(0, |row| row.rotations[i])
    }

    /// Count a failed step of `policy` in `rekey_step_failures_total`;
    /// `step` is one of [`STEPS`].
    pub fn count_step_failure(&self, policy: &str, step: &str) {
        self.count(policy, (&STEPS, step), PolicyRow::STEPS, |row| {
            &mut row.step_failures
        });
    }

    /// Add one to the counter of `policy` whose label is `label.1` (one of
    /// `label.0`): `counts(row)[i]`, series bit `first_bit << i`.
    fn count(
        &self,
        policy: &str,
        label: (&[&str], &str),
        first_bit: u32,
        counts: fn(&mut PolicyRow) -> &mut [u64],
    ) {
        let Some(i) = label_index(label.0, label.1) else {
            return;
        };
        self.policy.update(policy, |row| {
            row.present |= first_bit << i;
            counts(row)[i] += 1;
        });
    }

    /// Set `rekey_last_success_timestamp_seconds{policy}` (a Unix time).
    pub fn set_last_success(&self, policy: &str, unix_seconds: f64) {
        self.policy.update(policy, |row| {
            row.present |= PolicyRow::LAST_SUCCESS;
            row.last_success = unix_seconds;
        });
    }

    /// Set `rekey_oldest_unfinished_rotation_age_seconds{policy}`.
    pub fn set_oldest_unfinished(&self, policy: &str, seconds: f64) {
        self.policy.update(policy, |row| {
            row.present |= PolicyRow::OLDEST_UNFINISHED;
            row.oldest_unfinished = seconds;
        });
    }

    fn refs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PolicyRefs>> {
        // The map is only ever mutated whole-entry; a panic elsewhere
        // cannot leave it half-written, so a poisoned lock is still usable.
        self.policies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prometheus text exposition format 0.0.4. Renders every series: the
    /// status endpoint calls it off the request path and serves the last
    /// rendering (`status::server`).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec does not fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A policy's keys, for the per-key series: the published status itself
/// (shared with the status snapshot, not copied), or keys given alone.
enum KeyRows {
    Shared(Arc<PolicyStatus>),
    Own(Keys),
}

impl KeyRows {
    fn keys(&self) -> &Keys {
        match self {
            KeyRows::Shared(p) => &p.keys,
            KeyRows::Own(k) => k,
        }
    }
}

/// Per-policy keys, shared by [`Metrics`] and its [`KeyCollector`].
#[derive(Clone, Default)]
struct KeySeries(Arc<std::sync::RwLock<BTreeMap<String, KeyRows>>>);

/// Renders `rekey_key_expiry_timestamp_seconds` and
/// `rekey_key_created_timestamp_seconds` from [`KeySeries`] on each gather.
struct KeyCollector {
    descs: [prometheus::core::Desc; 2],
    keys: KeySeries,
}

const KEY_FAMILIES: [(&str, &str); 2] = [
    (
        "rekey_key_expiry_timestamp_seconds",
        "Expiry time of each live key, as a Unix timestamp.",
    ),
    (
        "rekey_key_created_timestamp_seconds",
        "Creation time of each live key, as a Unix timestamp.",
    ),
];

impl KeyCollector {
    fn new(keys: KeySeries) -> Self {
        let desc = |(name, help): (&str, &str)| {
            family_desc(
                name,
                help,
                vec!["policy".into(), "lineage".into(), "key".into()],
            )
        };
        KeyCollector {
            descs: [desc(KEY_FAMILIES[0]), desc(KEY_FAMILIES[1])],
            keys,
        }
    }
}

impl Collector for KeyCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{Gauge, Metric, MetricType};
        let map = self.keys.0.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (i, (name, help)) in KEY_FAMILIES.iter().enumerate() {
            let mut metrics = Vec::new();
            for (policy, rows) in map.iter() {
                // One series per label set: keys may share a name (some
                // providers allow it), and a scrape rejects a repeated
                // label set. The newest key's time is the one kept (what
                // `max by (policy, lineage)` reads). Keyed by borrowed
                // strings: nothing copied per key but the labels emitted.
                let mut series: BTreeMap<(&str, &str), f64> = BTreeMap::new();
                for row in rows.keys().iter() {
                    let at = if i == 0 {
                        row.expires_at()
                    } else {
                        row.created_at()
                    };
                    let Some(value) = at.map(unix_seconds) else {
                        continue;
                    };
                    series
                        .entry((row.lineage(), row.name()))
                        .and_modify(|v| *v = v.max(value))
                        .or_insert(value);
                }
                for ((lineage, key), value) in series {
                    // Label pairs in name order, as the crate's own vectors
                    // render them.
                    let labels = [
                        ("key", key),
                        ("lineage", lineage),
                        ("policy", policy.as_str()),
                    ]
                    .into_iter()
                    .map(|(n, v)| label_pair(n, v))
                    .collect();
                    let mut g = Gauge::default();
                    g.set_value(value);
                    let mut m = Metric::from_gauge(g);
                    m.set_label(labels);
                    metrics.push(m);
                }
            }
            out.extend(family(name, help, MetricType::GAUGE, metrics));
        }
        out
    }
}

/// The description of a family a custom collector renders, with its label
/// names.
fn family_desc(name: &str, help: &str, labels: Vec<String>) -> prometheus::core::Desc {
    prometheus::core::Desc::new(
        name.to_string(),
        help.to_string(),
        labels,
        Default::default(),
    )
    .expect("valid metric description")
}

/// One label of a series a custom collector renders.
fn label_pair(name: &str, value: &str) -> prometheus::proto::LabelPair {
    let mut l = prometheus::proto::LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// A family of `metrics` as a custom collector renders it; `None` when it
/// has no series (a prometheus vector with no series renders nothing).
fn family(
    name: &str,
    help: &str,
    kind: prometheus::proto::MetricType,
    metrics: Vec<prometheus::proto::Metric>,
) -> Option<prometheus::proto::MetricFamily> {
    if metrics.is_empty() {
        return None;
    }
    let mut f = prometheus::proto::MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    Some(f)
}

/// One policy's series: which exist (a bit each: a series exists once
/// touched, as in a prometheus vector, and [`Metrics::init_policy`] makes
/// them all) and their values.
#[derive(Debug, Clone, Copy, Default)]
struct PolicyRow {
    /// [`PolicyRow::ROTATIONS`]… bits of the series that exist.
    present: u32,
    /// `rekey_rotations_total`, by [`ROTATION_RESULTS`].
    rotations: [u64; ROTATION_RESULTS.len()],
    last_success: f64,
    healthy: f64,
    oldest_unfinished: f64,
    /// Bit `i` set while `Condition::ALL[i]` holds (`rekey_condition` 1).
    conditions_held: u16,
    /// `rekey_step_failures_total`, by [`STEPS`].
    step_failures: [u64; STEPS.len()],
}

impl PolicyRow {
    const ROTATIONS: u32 = 1;
    const LAST_SUCCESS: u32 = 1 << ROTATION_RESULTS.len();
    const HEALTHY: u32 = Self::LAST_SUCCESS << 1;
    const OLDEST_UNFINISHED: u32 = Self::HEALTHY << 1;
    /// First of `Condition::ALL.len()` bits.
    const CONDITION: u32 = Self::OLDEST_UNFINISHED << 1;
    const CONDITIONS: u32 = ((1 << Condition::ALL.len()) - 1) * Self::CONDITION;
    /// First of `STEPS.len()` bits.
    const STEPS: u32 = Self::CONDITION << Condition::ALL.len();
    const ALL_SERIES: u32 = (Self::STEPS << STEPS.len()) - 1;

    fn has(&self, bit: u32) -> bool {
        self.present & bit != 0
    }
}

/// Per-policy rows, shared by [`Metrics`] and its [`PolicyCollector`].
#[derive(Clone, Default)]
struct PolicySeries(Arc<std::sync::RwLock<BTreeMap<Box<str>, PolicyRow>>>);

impl PolicySeries {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Box<str>, PolicyRow>> {
        // Rows are plain values written whole-field: a panic elsewhere
        // cannot leave one half-written, so a poisoned lock is still usable.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Box<str>, PolicyRow>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Change `policy`'s row, making it (with no series) first if need be.
    fn update(&self, policy: &str, change: impl FnOnce(&mut PolicyRow)) {
        let mut map = self.write();
        match map.get_mut(policy) {
            Some(row) => change(row),
            None => {
                let mut row = PolicyRow::default();
                change(&mut row);
                map.insert(policy.into(), row);
            }
        }
    }
}

/// Where `value` is in `labels`; a value outside them is a caller's bug
/// (every caller passes one of the constants), so it counts nothing.
fn label_index(labels: &[&str], value: &str) -> Option<usize> {
    let i = labels.iter().position(|l| *l == value);
    debug_assert!(
        i.is_some(),
        "label value {value:?} is not one of {labels:?}"
    );
    i
}

/// A per-policy family: name, help, type, and its label beside `policy`.
struct PolicyFamily {
    name: &'static str,
    help: &'static str,
    counter: bool,
    label: Option<&'static str>,
}

const POLICY_FAMILIES: [PolicyFamily; 6] = [
    PolicyFamily {
        name: "rekey_rotations_total",
        help: "Rotations finished, by result (completed or failed).",
        counter: true,
        label: Some("result"),
    },
    PolicyFamily {
        name: "rekey_last_success_timestamp_seconds",
        help: "Time of the policy's last completed rotation, as a Unix timestamp (0 = never).",
        counter: false,
        label: None,
    },
    PolicyFamily {
        name: "rekey_policy_healthy",
        help: "1 when the policy's health is ok or rotating, else 0.",
        counter: false,
        label: None,
    },
    PolicyFamily {
        name: "rekey_condition",
        help: "1 while the stuck condition holds for some lineage of the policy (DESIGN §4).",
        counter: false,
        label: Some("condition"),
    },
    PolicyFamily {
        name: "rekey_oldest_unfinished_rotation_age_seconds",
        help: "Age in seconds of the policy's oldest unfinished rotation (0 when none).",
        counter: false,
        label: None,
    },
    PolicyFamily {
        name: "rekey_step_failures_total",
        help: "Failed rotation steps, by step (create, find_id, prepare, publish, retire).",
        counter: true,
        label: Some("step"),
    },
];

/// Renders the per-policy families ([`POLICY_FAMILIES`]) from
/// [`PolicySeries`] on each gather: the same names, HELP, TYPE, label
/// sets and values as one prometheus vector per family would.
struct PolicyCollector {
    descs: Vec<prometheus::core::Desc>,
    rows: PolicySeries,
}

impl PolicyCollector {
    fn new(rows: PolicySeries) -> Self {
        let descs = POLICY_FAMILIES
            .iter()
            .map(|f| {
                let mut labels = vec!["policy".to_string()];
                labels.extend(f.label.map(str::to_string));
                family_desc(f.name, f.help, labels)
            })
            .collect();
        PolicyCollector { descs, rows }
    }
}

/// The series of family `family` in `row`: (value of its second label, if
/// any; value), for those that exist.
fn policy_series(family: usize, row: &PolicyRow) -> Vec<(Option<&'static str>, f64)> {
    let each = |bit: u32, labels: &[&'static str], value: &dyn Fn(usize) -> f64| {
        (0..labels.len())
            .filter(|i| row.has(bit << i))
            .map(|i| (Some(labels[i]), value(i)))
            .collect()
    };
    let one = |bit: u32, value: f64| {
        if row.has(bit) {
            vec![(None, value)]
        } else {
            Vec::new()
        }
    };
    match family {
        0 => each(PolicyRow::ROTATIONS, &ROTATION_RESULTS, &|i| {
            row.rotations[i] as f64
        }),
        1 => one(PolicyRow::LAST_SUCCESS, row.last_success),
        2 => one(PolicyRow::HEALTHY, row.healthy),
        3 => {
            let names = Condition::ALL.map(Condition::as_str);
            each(PolicyRow::CONDITION, &names, &|i| {
                f64::from((row.conditions_held >> i) & 1)
            })
        }
        4 => one(PolicyRow::OLDEST_UNFINISHED, row.oldest_unfinished),
        _ => each(PolicyRow::STEPS, &STEPS, &|i| row.step_failures[i] as f64),
    }
}

impl Collector for PolicyCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{Counter, Gauge, Metric, MetricType};
        let rows = self.rows.read();
        let mut out = Vec::new();
        for (i, spec) in POLICY_FAMILIES.iter().enumerate() {
            let mut metrics = Vec::new();
            for (policy, row) in rows.iter() {
                for (second, value) in policy_series(i, row) {
                    // Label pairs in name order, as the crate's own vectors
                    // render them ("condition" < "policy" < "result", "step").
                    let mut labels = vec![label_pair("policy", policy)];
                    if let (Some(name), Some(v)) = (spec.label, second) {
                        labels.push(label_pair(name, v));
                    }
                    labels.sort_by(|a, b| a.name().cmp(b.name()));
                    let mut m = if spec.counter {
                        let mut c = Counter::default();
                        c.set_value(value);
                        let mut m = Metric::default();
                        m.set_counter(c);
                        m
                    } else {
                        let mut g = Gauge::default();
                        g.set_value(value);
                        Metric::from_gauge(g)
                    };
                    m.set_label(labels);
                    metrics.push(m);
                }
            }
            let kind = if spec.counter {
                MetricType::COUNTER
            } else {
                MetricType::GAUGE
            };
            out.extend(family(spec.name, spec.help, kind, metrics));
        }
        out
    }
}

fn unix_seconds(at: chrono::DateTime<chrono::Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// Label sets `(name, value)` of every series currently in `vec`.
fn label_sets<T: MetricVecBuilder>(vec: &MetricVec<T>) -> Vec<Vec<(String, String)>> {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| {
            m.get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect()
        })
        .collect()
}

fn label<'a>(set: &'a [(String, String)], name: &str) -> &'a str {
    set.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

/// Remove every series of `vec` whose label `name` equals `value`.
fn remove_where<T: MetricVecBuilder>(vec: &MetricVec<T>, name: &str, value: &str) {
    for set in label_sets(vec) {
        if label(&set, name) == value {
            let labels: std::collections::HashMap<&str, &str> =
                set.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let _ = vec.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::health::Health;
    use crate::rotation::report::LineageStatus;
    use crate::status::KeyState;
    use chrono::{TimeZone, Utc};

    fn key(lineage: &str, name: &str, expires: Option<i64>) -> KeyStatus {
        KeyStatus {
            id: format!("id-{name}"),
            name: name.to_string(),
            lineage: lineage.to_string(),
            created_at: Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
            expires_at: expires.map(|t| Utc.timestamp_opt(t, 0).unwrap()),
            state: KeyState::Current,
        }
    }

    fn lines_with(text: &str, needle: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn init_policy_creates_every_policy_and_sink_series_at_zero() {
        let m = Metrics::new();
        m.init_policy("p1", &["file".into(), "vault".into()], "ob");
        let text = m.render();
        for series in [
            r#"rekey_rotations_total{policy="p1",result="completed"} 0"#,
            r#"rekey_rotations_total{policy="p1",result="failed"} 0"#,
            r#"rekey_last_success_timestamp_seconds{policy="p1"} 0"#,
            r#"rekey_policy_healthy{policy="p1"} 0"#,
            r#"rekey_sink_publish_total{result="ok",sink="file"} 0"#,
            r#"rekey_sink_publish_total{result="error",sink="vault"} 0"#,
            r#"rekey_provider_rotations_total{provider="ob",result="completed"} 0"#,
            r#"rekey_provider_rotations_total{provider="ob",result="failed"} 0"#,
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }

    #[test]
    fn init_policy_again_keeps_counted_values() {
        let m = Metrics::new();
        m.init_policy("p1", &[], "ob");
        m.count_rotation("p1", "completed");
        m.init_policy("p1", &[], "ob");
        assert_eq!(m.rotations_total("p1", "completed"), 1);
    }

    #[test]
    fn sync_keys_sets_gauges_and_forgets_keys_that_are_gone() {
        let m = Metrics::new();
        m.sync_keys(
            "p1",
            &[
                key("app", "app-1", Some(1_800_000_000)),
                key("app", "app-2", None),
            ],
        );
        m.sync_keys("p2", &[key("x", "x-1", Some(1_900_000_000))]);
        let text = m.render();
        assert!(text.contains(
            r#"rekey_key_expiry_timestamp_seconds{key="app-1",lineage="app",policy="p1"} 1800000000"#
        ));
        assert_eq!(
            lines_with(&text, "app-2").len(),
            1,
            "no expiry series without an expiry"
        );

        m.sync_keys("p1", &[key("app", "app-2", None)]);
        let text = m.render();
        assert!(lines_with(&text, "app-1").is_empty(), "{text}");
        assert_eq!(lines_with(&text, "app-2").len(), 1);
        assert_eq!(
            lines_with(&text, "x-1").len(),
            2,
            "other policies untouched"
        );
    }

    /// Providers allow two keys of one name (OceanBase): each gave its own
    /// series with the same label set, which a Prometheus scrape rejects
    /// as duplicate samples (which one survives is arbitrary). One series
    /// per label set, with the newest key's time (what the shipped alert,
    /// `max by (policy, lineage)`, reads).
    #[test]
    fn keys_sharing_a_name_in_one_lineage_give_one_series_not_duplicates() {
        let m = Metrics::new();
        let mut older = key("app", "dup", Some(1_800_000_000));
        older.created_at = Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap());
        let mut newer = key("app", "dup", Some(1_900_000_000));
        newer.id = "id-dup-2".into();
        newer.created_at = Some(Utc.timestamp_opt(1_750_000_000, 0).unwrap());
        m.sync_keys("p1", &[newer, older, key("other", "dup", Some(1_000))]);
        let text = m.render();
        let series = |family: &str| -> Vec<&str> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .collect()
        };
        assert_eq!(
            series("rekey_key_expiry_timestamp_seconds"),
            [
                r#"rekey_key_expiry_timestamp_seconds{key="dup",lineage="app",policy="p1"} 1900000000"#,
                r#"rekey_key_expiry_timestamp_seconds{key="dup",lineage="other",policy="p1"} 1000"#,
            ],
            "{text}"
        );
        assert_eq!(
            series("rekey_key_created_timestamp_seconds")[0],
            r#"rekey_key_created_timestamp_seconds{key="dup",lineage="app",policy="p1"} 1750000000"#,
            "{text}"
        );
    }

    /// The per-policy families as they were rendered before
    /// [`PolicyCollector`]: one prometheus vector per family, driven as
    /// `init_policy`, `sync_policy`, `remove_policy` and the engine drove
    /// them. The reference the compact rows must render byte for byte.
    struct VecSeries {
        registry: Registry,
        rotations: IntCounterVec,
        last_success: GaugeVec,
        policy_healthy: GaugeVec,
        condition: GaugeVec,
        oldest_unfinished: GaugeVec,
        step_failures: IntCounterVec,
    }

    impl VecSeries {
        fn new() -> Self {
            let [rotations, step_failures] = [0, 5].map(|i| {
                let f = &POLICY_FAMILIES[i];
                IntCounterVec::new(Opts::new(f.name, f.help), &["policy", f.label.unwrap()])
                    .unwrap()
            });
            let [last_success, policy_healthy, condition, oldest_unfinished] =
                [1, 2, 3, 4].map(|i| {
                    let f = &POLICY_FAMILIES[i];
                    let labels: Vec<&str> = ["policy"].into_iter().chain(f.label).collect();
                    GaugeVec::new(Opts::new(f.name, f.help), &labels).unwrap()
                });
            let registry = Registry::new();
            for c in [
                Box::new(rotations.clone()) as Box<dyn Collector>,
                Box::new(last_success.clone()),
                Box::new(policy_healthy.clone()),
                Box::new(condition.clone()),
                Box::new(oldest_unfinished.clone()),
                Box::new(step_failures.clone()),
            ] {
                registry.register(c).unwrap();
            }
            VecSeries {
                registry,
                rotations,
                last_success,
                policy_healthy,
                condition,
                oldest_unfinished,
                step_failures,
            }
        }

        fn init_policy(&self, policy: &str) {
            for result in ROTATION_RESULTS {
                self.rotations.with_label_values(&[policy, result]);
            }
            self.last_success.with_label_values(&[policy]);
            self.policy_healthy.with_label_values(&[policy]);
            self.oldest_unfinished.with_label_values(&[policy]);
            for c in Condition::ALL {
                self.condition.with_label_values(&[policy, c.as_str()]);
            }
            for step in STEPS {
                self.step_failures.with_label_values(&[policy, step]);
            }
        }

        fn sync_policy(&self, status: &PolicyStatus) {
            self.policy_healthy
                .with_label_values(&[status.name.as_str()])
                .set(if status.health.is_healthy() { 1.0 } else { 0.0 });
            for c in Condition::ALL {
                let held = status.lineages.iter().any(|l| l.conditions().contains(&c));
                self.condition
                    .with_label_values(&[status.name.as_str(), c.as_str()])
                    .set(if held { 1.0 } else { 0.0 });
            }
        }

        fn remove_policy(&self, policy: &str) {
            for result in ROTATION_RESULTS {
                let _ = self.rotations.remove_label_values(&[policy, result]);
            }
            let _ = self.last_success.remove_label_values(&[policy]);
            let _ = self.policy_healthy.remove_label_values(&[policy]);
            let _ = self.oldest_unfinished.remove_label_values(&[policy]);
            remove_where(&self.condition, "policy", policy);
            remove_where(&self.step_failures, "policy", policy);
        }

        fn render(&self) -> String {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&self.registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        }
    }

    fn status(name: &str, health: Health, conditions: &[Condition]) -> PolicyStatus {
        let lineage = |name: &str, conditions: Vec<Condition>| LineageStatus {
            name: name.into(),
            health,
            current_key: None,
            reason: String::new(),
            message: String::new(),
            rotate_at: None,
            conditions,
            rotation: None,
        };
        PolicyStatus {
            name: name.into(),
            provider: "ob".into(),
            mode: "rotate".into(),
            health,
            next_check_at: None,
            last_check_at: None,
            keys: Keys::default(),
            lineages: vec![lineage("l1", conditions.to_vec()), lineage("l2", vec![])].into(),
            last_rotation: None,
            error: None,
        }
    }

    /// The lines of the per-policy families in a rendering.
    fn policy_family_lines(text: &str) -> String {
        text.lines()
            .filter(|l| {
                let name = l
                    .strip_prefix("# HELP ")
                    .or_else(|| l.strip_prefix("# TYPE "))
                    .unwrap_or(l);
                let name = name.split(['{', ' ']).next().unwrap_or_default();
                POLICY_FAMILIES.iter().any(|f| f.name == name)
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// What the engine does to a policy's series, applied to both sides.
    enum Op {
        Rotation(&'static str, &'static str),
        Step(&'static str, &'static str),
        LastSuccess(&'static str, f64),
        Oldest(&'static str, f64),
    }

    /// Per-policy series moved from ~20 prometheus children per policy
    /// (~9 KB each, 9 MB at 1,000 policies) to one compact row: the
    /// exposition must not change by a byte, for a healthy, a failing, a
    /// removed and a never-initialised policy.
    #[test]
    fn per_policy_series_render_as_the_prometheus_vectors_did() {
        let m = Metrics::new();
        let old = VecSeries::new();
        let both = |f: &dyn Fn(&Metrics), g: &dyn Fn(&VecSeries)| {
            f(&m);
            g(&old);
        };
        for p in ["healthy", "failing", "removed"] {
            both(&|m| m.init_policy(p, &[], "ob"), &|o| o.init_policy(p));
        }
        let healthy = Arc::new(status("healthy", Health::Ok, &[]));
        let failing = Arc::new(status(
            "failing",
            Health::Failing,
            &[Condition::StepFailing, Condition::KeyExpired],
        ));
        let removed = Arc::new(status("removed", Health::Rotating, &[]));
        for s in [&healthy, &failing, &removed] {
            both(&|m| m.sync_policy(s), &|o| o.sync_policy(s));
        }
        // Counted without init_policy: only the touched series exist.
        for op in [
            Op::Rotation("healthy", "completed"),
            Op::Rotation("healthy", "completed"),
            Op::LastSuccess("healthy", 1_800_000_000.0),
            Op::Rotation("failing", "failed"),
            Op::Step("failing", "find_id"),
            Op::Step("failing", "find_id"),
            Op::Step("failing", "retire"),
            Op::Oldest("failing", 93.25),
            Op::Rotation("removed", "completed"),
            Op::Step("uninitialised", "publish"),
            Op::Oldest("uninitialised", 0.5),
        ] {
            match op {
                Op::Rotation(p, r) => {
                    m.count_rotation(p, r);
                    old.rotations.with_label_values(&[p, r]).inc();
                }
                Op::Step(p, step) => {
                    m.count_step_failure(p, step);
                    old.step_failures.with_label_values(&[p, step]).inc();
                }
                Op::LastSuccess(p, v) => {
                    m.set_last_success(p, v);
                    old.last_success.with_label_values(&[p]).set(v);
                }
                Op::Oldest(p, v) => {
                    m.set_oldest_unfinished(p, v);
                    old.oldest_unfinished.with_label_values(&[p]).set(v);
                }
            }
        }
        let before = old.render();
        assert!(before.contains(r#"rekey_condition{condition="step_failing",policy="failing"} 1"#));
        assert!(before.contains(r#"policy="removed""#));
        assert_eq!(policy_family_lines(&m.render()), before);

        both(&|m| m.remove_policy("removed"), &|o| {
            o.remove_policy("removed")
        });
        let before = old.render();
        assert!(!before.contains(r#"policy="removed""#), "{before}");
        assert_eq!(policy_family_lines(&m.render()), before);
        assert_eq!(m.rotations_total("removed", "completed"), 0);
        assert_eq!(m.rotations_total("healthy", "completed"), 2);

        // Every series removed: the families go (no HELP/TYPE left alone).
        for p in ["healthy", "failing", "uninitialised"] {
            both(&|m| m.remove_policy(p), &|o| o.remove_policy(p));
        }
        assert_eq!(old.render(), "");
        assert_eq!(policy_family_lines(&m.render()), "");
    }

    #[test]
    fn remove_policy_drops_its_series_and_unshared_sinks_and_providers() {
        let m = Metrics::new();
        m.init_policy("p1", &["shared".into(), "only-p1".into()], "ob");
        m.init_policy("p2", &["shared".into()], "tc");
        m.sync_keys("p1", &[key("app", "app-1", Some(1_800_000_000))]);
        m.provider_requests
            .with_label_values(&["ob", "list", "200"])
            .inc();
        m.provider_requests
            .with_label_values(&["tc", "list", "200"])
            .inc();
        m.remove_policy("p1");
        let text = m.render();
        assert!(lines_with(&text, r#"policy="p1""#).is_empty(), "{text}");
        assert!(lines_with(&text, "only-p1").is_empty(), "{text}");
        assert!(!lines_with(&text, r#"sink="shared""#).is_empty());
        assert!(lines_with(&text, r#"provider="ob""#).is_empty(), "{text}");
        assert!(!lines_with(&text, r#"provider="tc""#).is_empty());
        assert!(!lines_with(&text, r#"policy="p2""#).is_empty());
    }
}
