//! The injected clock. Nothing in the planner or engine asks the system for
//! the time; it asks a `Clock`, so tests can move time by hand.
//!
//! The daemon runs on [`MonotonicClock`]: wall time read once at start,
//! then advanced by the boot-time clock (`CLOCK_BOOTTIME`, which counts
//! suspend and never steps). A wall-clock step while the daemon runs — NTP
//! correcting a bad RTC, an operator's `date -s` — therefore neither
//! shortens a grace period or a backoff (a forward step) nor stalls the
//! schedules (a backward step). Deadlines are stored as wall-clock times,
//! so a restart picks up the (corrected) wall clock again. A step is logged
//! once (WARN) so the operator knows rekey's notion of time differs from
//! the system's until it restarts.
//!
//! Also the one way durations are printed ([`human`]): `45s`, `1m 30s`,
//! `3h 5m`, `6d 23h`, `7d` — the two largest units, in the CLI, logs,
//! messages and errors alike.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Wall-clock time as the system says it (signatures, one-shot commands).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Time elapsed since a fixed origin that never steps.
pub trait Elapsed: Send + Sync + 'static {
    fn elapsed(&self) -> StdDuration;
}

/// `CLOCK_BOOTTIME`: monotonic, and it keeps counting while the machine is
/// suspended (so a grace period spans a suspend, as wall time would).
/// clock_gettime(2).
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTime;

impl Elapsed for BootTime {
    fn elapsed(&self) -> StdDuration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            // Not on Linux (or a kernel without it): the monotonic clock.
            // SAFETY: as above.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        }
        StdDuration::new(
            ts.tv_sec.max(0) as u64,
            ts.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }
}

/// A wall step larger than this is reported (once per step).
pub const STEP_REPORT: StdDuration = StdDuration::from_secs(60);

/// Wall time anchored once and advanced by an [`Elapsed`] source.
pub struct MonotonicClock<W: Clock = SystemClock, M: Elapsed = BootTime> {
    wall: W,
    mono: M,
    anchor_wall: DateTime<Utc>,
    anchor_mono: StdDuration,
    /// The wall offset last reported, so each step is logged once.
    reported: Mutex<i64>,
}

impl MonotonicClock {
    /// The daemon's clock: the system wall clock anchored to `CLOCK_BOOTTIME`.
    pub fn system() -> Self {
        MonotonicClock::new(SystemClock, BootTime)
    }
}

impl<W: Clock, M: Elapsed> MonotonicClock<W, M> {
    pub fn new(wall: W, mono: M) -> Self {
        let anchor_wall = wall.now();
        let anchor_mono = mono.elapsed();
        MonotonicClock {
            wall,
            mono,
            anchor_wall,
            anchor_mono,
            reported: Mutex::new(0),
        }
    }
}

impl<W: Clock, M: Elapsed> Clock for MonotonicClock<W, M> {
    fn now(&self) -> DateTime<Utc> {
        let since = self.mono.elapsed().saturating_sub(self.anchor_mono);
        let now = self.anchor_wall + Duration::from_std(since).unwrap_or(Duration::MAX);
        let offset = (self.wall.now() - now).num_seconds();
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if (offset - *reported).unsigned_abs() > STEP_REPORT.as_secs() {
            *reported = offset;
            tracing::warn!(
                wall_clock_offset_s = offset,
                "the wall clock stepped; rekey keeps measuring time on the boot clock (grace periods and backoffs are not shortened) and adopts the new wall time at its next start"
            );
        }
        now
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

/// A monotonic source tests advance by hand (never backwards).
#[derive(Debug, Clone, Default)]
pub struct ManualElapsed(Arc<Mutex<StdDuration>>);

impl ManualElapsed {
    pub fn advance(&self, d: StdDuration) {
        *self.0.lock().expect("clock lock") += d;
    }
}

impl Elapsed for ManualElapsed {
    fn elapsed(&self) -> StdDuration {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn a_wall_clock_step_either_way_does_not_move_the_daemons_time() {
        let wall = ManualClock::new(t0());
        let mono = ManualElapsed::default();
        let c = MonotonicClock::new(wall.clone(), mono.clone());
        mono.advance(StdDuration::from_secs(10));
        assert_eq!(c.now(), t0() + Duration::seconds(10));
        wall.advance(Duration::days(1));
        assert_eq!(
            c.now(),
            t0() + Duration::seconds(10),
            "forward step ignored"
        );
        wall.advance(Duration::days(-2));
        mono.advance(StdDuration::from_secs(5));
        assert_eq!(
            c.now(),
            t0() + Duration::seconds(15),
            "backward step ignored"
        );
    }

    #[test]
    fn boot_time_moves_forward() {
        let a = BootTime.elapsed();
        let b = BootTime.elapsed();
        assert!(b >= a);
        assert!(a > StdDuration::ZERO);
    }
}
