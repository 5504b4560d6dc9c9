//! Prometheus metrics (DESIGN §4), in a registry owned by the daemon rather
//! than a process global, so tests can run several daemons in one process.
//! Rendered in the classic text format (what `promtool check metrics` reads);
//! every family has HELP and TYPE.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub key_expiry: GaugeVec,
    pub key_created: GaugeVec,
    pub rotations: IntCounterVec,
    pub last_success: GaugeVec,
    pub policy_healthy: GaugeVec,
    pub provider_requests: IntCounterVec,
    pub provider_duration: HistogramVec,
    pub sink_publish: IntCounterVec,
    /// Key label sets currently exported per policy, so vanished keys'
    /// series can be removed.
    key_series:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<(String, String)>>>>,
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
        let key_expiry = GaugeVec::new(
            Opts::new(
                "rekey_key_expiry_timestamp_seconds",
                "Expiry time of each live key, as a Unix timestamp.",
            ),
            &["policy", "lineage", "key"],
        )
        .expect("metric");
        let key_created = GaugeVec::new(
            Opts::new(
                "rekey_key_created_timestamp_seconds",
                "Creation time of each live key, as a Unix timestamp.",
            ),
            &["policy", "lineage", "key"],
        )
        .expect("metric");
        let rotations = IntCounterVec::new(
            Opts::new(
                "rekey_rotations_total",
                "Rotations finished, by result (completed or failed).",
            ),
            &["policy", "result"],
        )
        .expect("metric");
        let last_success = GaugeVec::new(
            Opts::new(
                "rekey_last_success_timestamp_seconds",
                "Time of the policy's last completed rotation, as a Unix timestamp (0 = never).",
            ),
            &["policy"],
        )
        .expect("metric");
        let policy_healthy = GaugeVec::new(
            Opts::new(
                "rekey_policy_healthy",
                "1 when the policy's health is ok or rotating, else 0.",
            ),
            &["policy"],
        )
        .expect("metric");
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
        for c in [
            Box::new(key_expiry.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(key_created.clone()),
            Box::new(rotations.clone()),
            Box::new(last_success.clone()),
            Box::new(policy_healthy.clone()),
            Box::new(provider_requests.clone()),
            Box::new(provider_duration.clone()),
            Box::new(sink_publish.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            key_expiry,
            key_created,
            rotations,
            last_success,
            policy_healthy,
            provider_requests,
            provider_duration,
            sink_publish,
            key_series: Default::default(),
        }
    }

    /// Set the expiry/created gauges of a policy's live keys, dropping
    /// series of keys that are gone.
    pub fn sync_keys(&self, policy: &str, keys: &[crate::status::KeyStatus]) {
        let mut series = self.key_series.lock().unwrap_or_else(|p| p.into_inner());
        let now: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.lineage.clone(), k.name.clone()))
            .collect();
        if let Some(old) = series.get(policy) {
            for (lineage, key) in old.iter().filter(|o| !now.contains(o)) {
                let _ = self.key_expiry.remove_label_values(&[policy, lineage, key]);
                let _ = self
                    .key_created
                    .remove_label_values(&[policy, lineage, key]);
            }
        }
        series.insert(policy.to_string(), now);
        for k in keys {
            if let Some(e) = k.expires_at {
                self.key_expiry
                    .with_label_values(&[policy, &k.lineage, &k.name])
                    .set(e.timestamp() as f64);
            }
            if let Some(c) = k.created_at {
                self.key_created
                    .with_label_values(&[policy, &k.lineage, &k.name])
                    .set(c.timestamp() as f64);
            }
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec does not fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}
