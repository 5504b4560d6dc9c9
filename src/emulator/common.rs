//! Pieces the emulators share: the knobs every emulator has
//! ([`CommonKnobs`]: `--list-delay`), a random-string helper, query
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
