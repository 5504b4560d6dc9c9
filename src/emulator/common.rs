//! The emulators' small framework: the knobs every emulator has
//! ([`CommonKnobs`]: `--list-delay`), the run-time fault dials behind the
//! admin API ([`Dials`]: rate limit, error rate, latency), the queue of
//! forced faults ([`Forced`], [`take_forced`]), a random-string helper, query
//! decoding, a serde helper for humantime durations, and the background
//! server with graceful shutdown that `start()` returns. (The rate parser,
//! token bucket and the admin API's loopback rule are in the parent
//! module.)

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use rand::Rng;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `n` random ASCII letters and digits.
pub fn alnum(rng: &mut impl Rng, n: usize) -> String {
    (0..n)
        .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
        .collect()
}

/// Decode `%XX` escapes (and, with `plus_is_space`, `+` as in a query
/// string); `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A raw query string as decoded `(key, value)` pairs, in order.
pub fn query_pairs(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// `Option<Duration>` as a humantime string (`"20ms"`) in JSON.
pub mod opt_humantime {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Knobs every emulator has beyond its vendor's documented behaviour,
/// parsed once (`rekey emulate <kind> --list-delay …`) and applied by each
/// emulator's list handler.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct CommonKnobs {
    /// Eventually consistent listing: keys created less than this long ago
    /// are not listed yet (e.g. 2s). Deletes show at once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub list_delay: Duration,
}

impl CommonKnobs {
    /// Whether a key created at `created` (emulator monotonic time) shows
    /// in a listing at `now`.
    pub fn listed(&self, created: std::time::Instant, now: std::time::Instant) -> bool {
        now.saturating_duration_since(created) >= self.list_delay
    }
}

/// The fault dials every emulator has, changeable at run time through its
/// admin API: a per-operation rate limit (one token bucket per operation,
/// as vendors limit per API), an error rate drawn from a seeded generator,
/// and a latency added before every answer.
#[derive(Debug)]
pub struct Dials {
    rate_limit: Option<f64>,
    buckets: std::collections::HashMap<String, super::TokenBucket>,
    error_rate: f64,
    latency: Duration,
    rng: rand::rngs::StdRng,
}

impl Dials {
    pub fn new(rate_limit: Option<f64>, error_rate: f64, latency: Duration, seed: u64) -> Self {
        use rand::SeedableRng;
        Dials {
            rate_limit,
            buckets: std::collections::HashMap::new(),
            error_rate,
            latency,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// Change what a `POST /__emulator/faults` names: an error rate within
    /// 0..=1, a latency, a rate (`0` turns the limit off).
    pub fn apply(
        &mut self,
        error_rate: Option<f64>,
        latency: Option<Duration>,
        rate_limit: Option<f64>,
    ) -> Result<(), String> {
        if let Some(r) = error_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("error_rate {r} is not within 0..=1"));
            }
            self.error_rate = r;
        }
        if let Some(l) = latency {
            self.latency = l;
        }
        if let Some(r) = rate_limit {
            if !r.is_finite() || r < 0.0 {
                return Err(format!("rate_limit {r} is negative"));
            }
            self.rate_limit = (r > 0.0).then_some(r);
            self.buckets.clear();
        }
        Ok(())
    }

    /// Take a token for `op`; `Err` is how long until one is free.
    pub fn throttle(&mut self, op: &str) -> Result<(), Duration> {
        let Some(rate) = self.rate_limit else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        self.buckets
            .entry(op.to_string())
            .or_insert_with(|| super::TokenBucket::new(rate, t))
            .try_take(t)
    }

    /// Whether this call draws an injected error.
    pub fn draw_error(&mut self) -> bool {
        self.error_rate > 0.0 && self.rng.random::<f64>() < self.error_rate
    }

    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The dials as the admin API shows them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error_rate": self.error_rate,
            "latency": humantime::format_duration(self.latency).to_string(),
            "rate_limit": self.rate_limit,
        })
    }
}

/// A fault queued for the next calls of an operation (`"*"`: any).
pub trait Forced: Clone {
    /// The operation (or action) it answers; `"*"` for any.
    fn operation(&self) -> &str;
    /// How many more calls it answers.
    fn count_mut(&mut self) -> &mut u32;
}

/// Take the first queued fault for `op`, counting it down.
pub fn take_forced<F: Forced>(queue: &mut Vec<F>, op: &str) -> Option<F> {
    let i = queue
        .iter()
        .position(|f| f.operation() == "*" || f.operation() == op)?;
    let f = queue[i].clone();
    if *queue[i].count_mut() <= 1 {
        queue.remove(i);
    } else {
        *queue[i].count_mut() -= 1;
    }
    Some(f)
}

/// An axum app served in the background until [`Server::shutdown`].
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.addr)
    }
}

impl Server {
    /// Bind `listen` (port 0 picks one) and serve `app` on the current
    /// runtime, with the peer address available to handlers.
    pub async fn start(listen: SocketAddr, app: Router) -> io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
        });
        Ok(Server {
            addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, give in-flight requests up to 5 s, then stop.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Wait for Ctrl-C (or SIGTERM), for `rekey emulate`.
pub async fn until_interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct F(&'static str, u32);
    impl Forced for F {
        fn operation(&self) -> &str {
            self.0
        }
        fn count_mut(&mut self) -> &mut u32 {
            &mut self.1
        }
    }

    #[test]
    fn forced_faults_count_down_and_match_any_with_a_star() {
        let mut q = vec![F("list", 2), F("*", 1)];
        assert_eq!(take_forced(&mut q, "list"), Some(F("list", 2)));
        assert_eq!(take_forced(&mut q, "list"), Some(F("list", 1)));
        assert_eq!(take_forced(&mut q, "delete"), Some(F("*", 1)));
        assert_eq!(take_forced(&mut q, "list"), None);
    }

    #[test]
    fn dials_throttle_per_operation_and_refuse_bad_values() {
        let mut d = Dials::new(Some(1.0), 0.0, Duration::ZERO, 1);
        assert!(d.throttle("list").is_ok());
        assert!(d.throttle("list").is_err());
        assert!(d.throttle("create").is_ok());
        assert!(!d.draw_error());
        assert!(d.apply(Some(2.0), None, None).is_err());
        assert!(d.apply(None, None, Some(-1.0)).is_err());
        d.apply(Some(1.0), None, Some(0.0)).unwrap();
        assert!(d.throttle("list").is_ok() && d.draw_error());
    }

    #[test]
    fn queries_decode_like_a_server_would() {
        assert_eq!(
            query_pairs("limit=100&offset=0&q=a%20b+c").unwrap(),
            vec![
                ("limit".to_string(), "100".to_string()),
                ("offset".to_string(), "0".to_string()),
                ("q".to_string(), "a b c".to_string()),
            ]
        );
        assert!(query_pairs("x=%zz").is_none());
        assert_eq!(percent_decode("%2Ftmp", false).unwrap(), "/tmp");
    }
}
