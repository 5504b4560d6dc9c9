//! Creation and expiry times in the forms the vendors emit, per provider,
//! in one table ([`FORMS`]) (PROTOCOLS §2 `ApiKey`, §3.3, §4).
//!
//! | form | example | OceanBase | Tencent | Huawei |
//! |---|---|---|---|---|
//! | RFC 3339 (`Z` or `±hh:mm`, optional fraction) | `2026-09-01T08:00:00Z` | yes | yes (documented) | yes |
//! | ISO 8601 with `±hhmm` | `2026-09-01T08:00:00.000+0800` | yes | yes | yes |
//! | `Y-m-d H:M:S`, `Y/m/d H:M:S`, `Y-m-dTH:M:S` without a zone | `2026/10/06 13:21:34` | yes | yes | yes |
//! | Unix seconds or milliseconds (number or digits) | `1709287200`, `1709287200000` | yes | no | yes |
//!
//! A time without a zone is read in the vendor's own zone, UTC+8 for all
//! three (OceanBase and Tencent are run from China; NES from Singapore):
//! of the zones it could be in, that is also earlier than UTC, so a key
//! looks older, never younger, than it might be, and `max_age` errs on the
//! side of rotating. Epoch numbers above 10^11 are milliseconds. A time
//! outside years 0000–9999 (microseconds read as milliseconds, say) is not
//! guessed at: it is unknown. Offsets may be `±hh:mm`, `±hhmm` or `±hh`.
//!
//! A value that fits no form is an error carrying it; backends record it
//! in `ProviderKey::meta[META_UNKNOWN_TIME]` (escaped when shown), never
//! treat it as "no time".

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

/// Which forms a provider's times come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forms {
    /// Epoch seconds/milliseconds accepted.
    pub epoch: bool,
    /// Offset east of UTC, in seconds, of times written without a zone.
    pub zoneless_offset: i32,
}

/// The table, by provider kind.
pub const FORMS: &[(&str, Forms)] = &[
    (
        "oceanbase",
        Forms {
            epoch: true,
            zoneless_offset: 8 * 3600,
        },
    ),
    (
        "tencent-apigateway",
        Forms {
            epoch: false,
            zoneless_offset: 8 * 3600,
        },
    ),
    (
        "huawei-nes",
        Forms {
            epoch: true,
            zoneless_offset: 8 * 3600,
        },
    ),
];

/// The forms of `kind`; unknown kinds get the most permissive row.
pub fn forms(kind: &str) -> Forms {
    FORMS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, f)| *f)
        .unwrap_or(Forms {
            epoch: true,
            zoneless_offset: 8 * 3600,
        })
}

/// Longest raw value kept in an error or `meta` (a hostile server could
/// send megabytes).
pub const MAX_RAW: usize = 100;

/// The raw value, clipped to [`MAX_RAW`] characters, for reporting.
pub fn clip_raw(s: &str) -> String {
    if s.chars().count() <= MAX_RAW {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_RAW).collect();
        t.push('…');
        t
    }
}

/// Parse a time string of `kind`. `Err` carries the (clipped) raw value.
pub fn parse_str(kind: &str, s: &str) -> Result<DateTime<Utc>, String> {
    let f = forms(kind);
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return in_range(d.to_utc(), s);
    }
    // `%#z`: `±hhmm`, `±hh:mm`, or ISO 8601's hours-only `±hh`.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(d) = DateTime::parse_from_str(t, fmt) {
            return in_range(d.to_utc(), s);
        }
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            let zone = FixedOffset::east_opt(f.zoneless_offset)
                .unwrap_or(FixedOffset::east_opt(0).expect("UTC"));
            if let Some(d) = zone.from_local_datetime(&n).earliest() {
                return in_range(d.to_utc(), s);
            }
        }
    }
    if f.epoch
        && !t.is_empty()
        && t.len() <= 16
        && t.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = t.parse::<i64>()
        && let Some(d) = from_epoch(n)
    {
        return Ok(d);
    }
    Err(clip_raw(s))
}

/// Epoch seconds, or milliseconds above 10^11; `None` outside
/// [`LAST_EPOCH_SECOND`] (16 digits of microseconds read as milliseconds
/// would be a key from the year 56135, forever fresh).
fn from_epoch(n: i64) -> Option<DateTime<Utc>> {
    let d = if n > 100_000_000_000 {
        DateTime::from_timestamp_millis(n)
    } else {
        DateTime::from_timestamp(n, 0)
    }?;
    (d.timestamp() <= LAST_EPOCH_SECOND && d.timestamp() >= FIRST_EPOCH_SECOND).then_some(d)
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write. Later times
/// are refused: none is a real creation or expiry time, and adding a
/// `max_age` to one near chrono's limit would overflow.
pub const LAST_EPOCH_SECOND: i64 = 253_402_300_799;
/// 0000-01-01T00:00:00Z, the first second RFC 3339 can write.
pub const FIRST_EPOCH_SECOND: i64 = -62_167_219_200;

fn in_range(d: DateTime<Utc>, raw: &str) -> Result<DateTime<Utc>, String> {
    if (FIRST_EPOCH_SECOND..=LAST_EPOCH_SECOND).contains(&d.timestamp()) {
        Ok(d)
    } else {
        Err(clip_raw(raw))
    }
}

/// Parse a JSON time of `kind`: `Ok(None)` for absent (`null`, `""`);
/// `Err` carries the raw value (JSON text for non-strings), clipped.
pub fn parse_value(kind: &str, v: Option<&Value>) -> Result<Option<DateTime<Utc>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_str(kind, s).map(Some),
        Some(Value::Number(n)) if forms(kind).epoch => n
            .as_i64()
            .and_then(from_epoch)
            .map(Some)
            .ok_or_else(|| clip_raw(&n.to_string())),
        Some(other) => Err(clip_raw(&other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn every_form_in_the_table_parses_per_provider() {
        // (kind, raw, expected or None for "refused")
        let cases: &[(&str, Value, Option<&str>)] = &[
            (
                "huawei-nes",
                json!("2026-09-01T08:00:00Z"),
                Some("2026-09-01T08:00:00Z"),
            ),
            (
                "huawei-nes",
                json!("2026-09-01T08:00:00.000+0800"),
                Some("2026-09-01T00:00:00Z"),
            ),
            (
                "huawei-nes",
                json!("2026-09-01T08:00:00+08:00"),
                Some("2026-09-01T00:00:00Z"),
            ),
            (
                "huawei-nes",
                json!("2026-09-01 08:00:00-0130"),
                Some("2026-09-01T09:30:00Z"),
            ),
            // Zoneless: the vendor's zone, UTC+8 (older than reading UTC).
            (
                "huawei-nes",
                json!("2026/10/06 13:21:34"),
                Some("2026-10-06T05:21:34Z"),
            ),
            (
                "huawei-nes",
                json!("2026-10-06 13:21:34"),
                Some("2026-10-06T05:21:34Z"),
            ),
            (
                "huawei-nes",
                json!("2026-10-06T13:21:34.5"),
                Some("2026-10-06T05:21:34.5Z"),
            ),
            (
                "huawei-nes",
                json!(1709287200),
                Some("2024-03-01T10:00:00Z"),
            ),
            (
                "huawei-nes",
                json!(1709287200000i64),
                Some("2024-03-01T10:00:00Z"),
            ),
            (
                "huawei-nes",
                json!("1709287200000"),
                Some("2024-03-01T10:00:00Z"),
            ),
            (
                "tencent-apigateway",
                json!("2020-02-26T06:09:44Z"),
                Some("2020-02-26T06:09:44Z"),
            ),
            (
                "tencent-apigateway",
                json!("2020-02-26 14:09:44"),
                Some("2020-02-26T06:09:44Z"),
            ),
            ("tencent-apigateway", json!("1709287200"), None),
            (
                "oceanbase",
                json!("2026-01-01T00:00:00.123Z"),
                Some("2026-01-01T00:00:00.123Z"),
            ),
            (
                "oceanbase",
                json!("2026-01-01 08:00:00"),
                Some("2026-01-01T00:00:00Z"),
            ),
            ("oceanbase", json!("soon"), None),
            ("huawei-nes", json!("2026-13-01 00:00:00"), None),
            ("huawei-nes", json!(true), None),
            ("huawei-nes", json!("99999999999999999999"), None),
        ];
        for (kind, raw, want) in cases {
            let got = parse_value(kind, Some(raw));
            match want {
                Some(w) => assert_eq!(got, Ok(Some(utc(w))), "{kind} {raw}"),
                None => assert!(got.is_err(), "{kind} {raw}: {got:?}"),
            }
        }
        assert_eq!(parse_value("huawei-nes", Some(&json!(""))), Ok(None));
        assert_eq!(parse_value("huawei-nes", None), Ok(None));
    }

    #[test]
    fn an_epoch_in_microseconds_is_unknown_not_a_key_from_the_year_56135() {
        // 16 digits read as milliseconds would put the key 54,000 years in
        // the future: forever "fresh". Unknown instead (never a guess).
        for raw in [json!(1709287200000000i64), json!("1709287200000000")] {
            assert!(parse_value("huawei-nes", Some(&raw)).is_err(), "{raw}");
        }
        // Near chrono's last year: adding a max_age would overflow.
        assert!(parse_value("huawei-nes", Some(&json!(8_210_266_876_799_999i64))).is_err());
        assert!(parse_value("huawei-nes", Some(&json!(-8_000_000_000_000i64))).is_err());
        // The last second RFC 3339 can write still parses.
        assert_eq!(
            parse_str("huawei-nes", "9999-12-31T23:59:59Z"),
            Ok(utc("9999-12-31T23:59:59Z"))
        );
    }

    #[test]
    fn an_offset_of_hours_only_is_read_not_unknown() {
        assert_eq!(
            parse_str("huawei-nes", "2026-09-01T08:00:00+08"),
            Ok(utc("2026-09-01T00:00:00Z"))
        );
        assert_eq!(
            parse_str("tencent-apigateway", "2026-09-01 08:00:00.5-03"),
            Ok(utc("2026-09-01T11:00:00.5Z"))
        );
    }

    #[test]
    fn a_zoneless_time_never_makes_a_key_look_younger_than_utc_would() {
        let zoneless = parse_str("huawei-nes", "2026-09-01 08:00:00").unwrap();
        let as_utc = utc("2026-09-01T08:00:00Z");
        assert!(zoneless <= as_utc);
    }

    #[test]
    fn an_unparseable_value_comes_back_raw_and_clipped() {
        assert_eq!(
            parse_str("oceanbase", "yesterday\u{1b}[2J"),
            Err("yesterday\u{1b}[2J".into())
        );
        let long = "x".repeat(500);
        let e = parse_str("oceanbase", &long).unwrap_err();
        assert_eq!(e.chars().count(), MAX_RAW + 1);
    }
}
