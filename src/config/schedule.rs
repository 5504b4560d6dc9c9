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

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
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
                    "cron line has {n} fields; expected 6 (sec min hour dom mon dow), 7 (with year) or a classic 5"
                ));
            }
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .dom_and_dow(true)
            .build();
        let cron = parser.parse(trimmed).map_err(|e| e.to_string())?;
        // A pattern that can never fire (31 February) is an error too.
        cron.find_next_occurrence(&Utc::now(), false)
            .map_err(|e| format!("schedule never fires: {e}"))?;
        Ok(Schedule {
            expr: trimmed.to_string(),
            cron,
        })
    }
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
        assert!(!e.is_empty());
        assert!("@hourly".parse::<Schedule>().is_ok());
    }
}
