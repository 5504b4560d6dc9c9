//! The injected clock. Nothing in the planner or engine asks the system for
//! the time; it asks a `Clock`, so tests can move time by hand.
//!
//! Also the one way durations are printed ([`human`]): `45s`, `1m 30s`,
//! `3h 5m`, `6d 23h`, `7d` — the two largest units, in the CLI, logs,
//! messages and errors alike.

use std::sync::Arc;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time, for the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock tests set and advance by hand.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut g = self.0.lock().expect("clock lock");
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A duration the one way rekey prints them: the two largest non-zero
/// units of d/h/m/s (`6d 23h`, `3h 5m`, `1m 30s`, `45s`, `7d`); below a
/// second, milliseconds (`250ms`); zero is `0s`.
pub fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        let ms = d.subsec_millis();
        return if ms == 0 {
            "0s".to_string()
        } else {
            format!("{ms}ms")
        };
    }
    let units = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    let mut out = format!("{}{}", units[first].0, units[first].1);
    if let Some((n, u)) = units.get(first + 1)
        && *n > 0
    {
        out.push_str(&format!(" {n}{u}"));
    }
    out
}

/// As [`human`] for a signed span (its magnitude; the caller says "in" or
/// "ago").
pub fn human_delta(d: Duration) -> String {
    human(d.abs().to_std().unwrap_or_default())
}

#[cfg(test)]
mod human_tests {
    use super::*;

    #[test]
    fn durations_print_as_their_two_largest_units() {
        let s = std::time::Duration::from_secs;
        assert_eq!(human(s(0)), "0s");
        assert_eq!(human(std::time::Duration::from_millis(250)), "250ms");
        assert_eq!(human(s(45)), "45s");
        assert_eq!(human(s(90)), "1m 30s");
        assert_eq!(human(s(3600 * 3 + 300 + 7)), "3h 5m");
        assert_eq!(human(s(7 * 86_400)), "7d");
        assert_eq!(human(s(7 * 86_400 - 1)), "6d 23h");
        assert_eq!(human(s(86_400 + 59)), "1d");
        assert_eq!(human_delta(Duration::seconds(-90)), "1m 30s");
    }
}
