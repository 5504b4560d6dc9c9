//! Cron schedules: `sec min hour dom mon dow [year]`.
//!
//! Six fields (seconds first) or seven (with a year) as tokio-cron-scheduler
//! reads them; a classic five-field line is accepted and means second 0.
//! Nicknames (`@hourly`, `@daily`, …) work. As in tokio-cron-scheduler, a
//! line that restricts both day-of-month and day-of-week matches only days
//! that satisfy **both** (`0 0 3 1 * MON` = Mondays that are the 1st), unlike
//! Vixie cron, which matches either. Times are UTC.
//!
//! Parsed with croner, whose errors say what is wrong (tokio-cron-scheduler's
//! own parse error says only `ParseSchedule`).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use super::shared::SharedByText;

/// Parsed cron lines, one per distinct (trimmed) line ([`SharedByText`]).
static PARSED: LazyLock<SharedByText<Cron>> = LazyLock::new(SharedByText::new);

#[derive(Clone)]
pub struct Schedule {
    expr: String,
    /// Shared by every schedule of the same line.
    cron: Arc<Cron>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.expr)
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Schedule {
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        if !trimmed.starts_with('@') {
            let n = trimmed.split_whitespace().count();
            if !(5..=7).contains(&n) {
                return Err(format!(
                    "cron line has {n} field{}; expected 6 (sec min hour dom mon dow), 7 (with year) or a classic 5",
                    if n == 1 { "" } else { "s" }
                ));
            }
        }
        let cron = PARSED.get_or_compile(trimmed, |t| {
            CronParser::builder()
                .seconds(Seconds::Optional)
                .dom_and_dow(true)
                .build()
                .parse(t)
                .map_err(|e| out_of_range(t).unwrap_or_else(|| e.to_string()))
        })?;
        // A pattern that can never fire (31 February) is an error too.
        cron.find_next_occurrence(&Utc::now(), false)
            .map_err(|e| format!("schedule never fires: {e}"))?;
        Ok(Schedule {
            expr: trimmed.to_string(),
            cron,
        })
    }
}

/// Which field holds a number outside its range, for a better message than
/// croner's "Number out of bounds" (which does not say where).
fn out_of_range(line: &str) -> Option<String> {
    const SEC: (&str, u32, u32) = ("second", 0, 59);
    const MIN: (&str, u32, u32) = ("minute", 0, 59);
    const HOUR: (&str, u32, u32) = ("hour", 0, 23);
    const DOM: (&str, u32, u32) = ("day of month", 1, 31);
    const MON: (&str, u32, u32) = ("month", 1, 12);
    const DOW: (&str, u32, u32) = ("day of week", 0, 7);
    const YEAR: (&str, u32, u32) = ("year", 1, 5000);
    let fields: Vec<&str> = line.split_whitespace().collect();
    let layout: &[(&str, u32, u32)] = match fields.len() {
        5 => &[MIN, HOUR, DOM, MON, DOW],
        6 => &[SEC, MIN, HOUR, DOM, MON, DOW],
        7 => &[SEC, MIN, HOUR, DOM, MON, DOW, YEAR],
        _ => return None,
    };
    for (field, (name, lo, hi)) in fields.iter().zip(layout) {
        for part in field.split(',') {
            // `a-b/step`: the step is a count, not a value of the field.
            let range = part.split('/').next().unwrap_or(part);
            for n in range.split('-').filter_map(|v| v.parse::<u32>().ok()) {
                if n < *lo || n > *hi {
                    return Some(format!("{name} {n} is out of range ({lo}-{hi})"));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn six_fields_fire_on_the_second() {
        let s: Schedule = "*/20 * * * * *".parse().unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T10:00:05Z")),
            Some(at("2026-11-22T10:00:20Z"))
        );
    }

    #[test]
    fn five_fields_mean_second_zero() {
        let s: Schedule = "*/15 * * * *".parse().unwrap();
        assert_eq!(
            s.next_after(at("2026-11-22T10:00:05Z")),
            Some(at("2026-11-22T10:15:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_are_anded() {
        let s: Schedule = "0 0 3 1 * MON".parse().unwrap();
        let next = s
            .next_after(Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap())
            .unwrap();
        // The first Monday that is also the 1st after 2026-11-22 is 2027-02-01.
        assert_eq!(next, at("2027-02-01T03:00:00Z"));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let e = "0 */15 * * * * * *".parse::<Schedule>().unwrap_err();
        assert!(e.contains("8 fields"), "{e}");
        let e = "0 99 * * * *".parse::<Schedule>().unwrap_err();
        assert_eq!(e, "minute 99 is out of range (0-59)");
        let e = "0 0 12 * 13 *".parse::<Schedule>().unwrap_err();
        assert_eq!(e, "month 13 is out of range (1-12)");
        let e = "* *".parse::<Schedule>().unwrap_err();
        assert!(e.starts_with("cron line has 2 fields;"), "{e}");
        assert!("@hourly".parse::<Schedule>().is_ok());
    }

    /// Schedules of one line share one parsed cron; a schedule that never
    /// fires is refused however often it is parsed.
    #[test]
    fn schedules_of_one_line_share_their_cron() {
        let a: Schedule = "*/10 * * * * *".parse().unwrap();
        let b: Schedule = " */10 * * * * * ".parse().unwrap();
        assert!(Arc::ptr_eq(&a.cron, &b.cron));
        let t = at("2026-12-01T00:00:05Z");
        assert_eq!(a.next_after(t), Some(at("2026-12-01T00:00:10Z")));
        assert_eq!(a.next_after(t), b.next_after(t));
        let c: Schedule = "*/15 * * * * *".parse().unwrap();
        assert!(!Arc::ptr_eq(&a.cron, &c.cron));
        for _ in 0..2 {
            assert!("0 0 0 31 2 *".parse::<Schedule>().is_err());
        }
    }
}
