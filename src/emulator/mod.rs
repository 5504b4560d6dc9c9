//! Loopback emulators of the provider APIs, for `rekey dev`, the
//! integration tests and the benchmarks (`rekey emulate …`).
//!
//! Each emulator is faithful to its seed API document (request and response
//! shapes, authentication, documented quirks) and adds knobs a real provider
//! does not have: pre-seeded keys, latency, an error rate, a rate limit, and
//! an unauthenticated admin API under `/__emulator/` (answered on loopback
//! only) to read every key including its secret, inject faults and read
//! request counts. State lives in memory; nothing is written to disk.
//!
//! - [`oceanbase`]: OceanBase Cloud MaaS API keys (HTTP Digest auth).
//! - [`tencent`]: Tencent Cloud API Gateway keys (TC3 signatures, HTTP-200
//!   error envelopes, usage plans).
//! - [`huawei`]: Huawei Cloud NES credentials (token, fake IAM, AK/SK).
//! - [`common`]: server lifecycle and fault helpers the Tencent and Huawei
//!   emulators share.
//!
//! This file holds the pieces every emulator shares: the token bucket behind
//! `--rate-limit`, the parser for `20/s`-style rates, and the loopback check
//! of the admin API.

pub mod common;
pub mod huawei;
pub mod oceanbase;
pub mod sig;
pub mod tencent;
pub mod zip;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Parse a request rate written as `N/s`, `N/min` or `N/h` (as in the
/// config's `rate_limit`) into requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<crate::config::RateLimit>()
        .map(|r| r.per_second)
}

/// A token bucket: `rate` tokens per second, holding at most one second's
/// worth (at least one token), so a client may burst briefly and is then
/// held to the rate, like an API gateway's limiter.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill speed in tokens per second.
    rate: f64,
    /// Burst size: what an idle client may spend at once.
    capacity: f64,
    /// Tokens available at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, now: Instant) -> Self {
        let capacity = per_second.max(1.0).floor();
        TokenBucket {
            rate: per_second,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Take one token, or say how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least one (the header
/// carries whole seconds and `0` would invite an immediate retry).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

/// The admin API answers only clients on the loopback interface: it hands
/// out every key's secret and takes no credentials.
pub fn admin_allowed(peer: &SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("600/min").unwrap(), 10.0);
        assert_eq!(parse_rate(" 3600 / h ").unwrap(), 1.0);
        assert!(parse_rate("20").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("5/week").is_err());
        assert!(parse_rate("x/s").is_err());
        assert_eq!(parse_rate("7200/h").unwrap(), 2.0);
    }

    #[test]
    fn bucket_allows_a_burst_then_holds_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn slow_rates_still_allow_one_request() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0 / 60.0, t0);
        assert!(b.try_take(t0).is_ok());
        let wait = b.try_take(t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 60);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn admin_api_is_loopback_only() {
        assert!(admin_allowed(&"127.0.0.1:1".parse().unwrap()));
        assert!(admin_allowed(&"[::1]:1".parse().unwrap()));
        assert!(admin_allowed(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!admin_allowed(&"10.0.0.1:1".parse().unwrap()));
    }
}
