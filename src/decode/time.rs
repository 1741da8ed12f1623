//! Event-time rules. All times are microseconds since the Unix epoch, UTC.

use chrono::{DateTime, NaiveDateTime};

const US_PER_MS: i64 = 1_000;
const US_PER_MIN: i64 = 60_000_000;
const BEIJING_OFFSET_US: i64 = 8 * 3600 * 1_000_000;

/// RFC 3339 / ISO 8601 with a zone.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_micros())
}

/// `YYYY-mm-dd HH:MM:SS[.fff]` (or with a `T`) without a zone, read as Beijing time (UTC+8).
pub fn parse_beijing_local_us(s: &str) -> Option<i64> {
    let s = s.trim();
    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()?;
    Some(t.and_utc().timestamp_micros() - BEIJING_OFFSET_US)
}

/// An epoch number of unknown unit, judged by magnitude: s, ms, us or ns.
pub fn epoch_auto_us(v: f64) -> Option<i64> {
    if !v.is_finite() || v <= 0.0 {
        return None;
    }
    let us = if v >= 1e17 {
        v / 1_000.0
    } else if v >= 1e14 {
        v
    } else if v >= 1e11 {
        v * 1_000.0
    } else {
        v * 1_000_000.0
    };
    finite_i64(us)
}

pub fn epoch_ms_us(v: f64) -> Option<i64> {
    finite_i64(v * 1_000.0)
}

pub fn epoch_s_us(v: f64) -> Option<i64> {
    finite_i64(v * 1_000_000.0)
}

fn finite_i64(v: f64) -> Option<i64> {
    (v.is_finite() && v.abs() < 9.0e18).then(|| v.round() as i64)
}

/// A text time in any of the forms seen in the field.
pub fn parse_text_auto_us(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        return epoch_auto_us(v);
    }
    parse_rfc3339_us(t).or_else(|| parse_beijing_local_us(t))
}

/// Rebuilds a full time from `secMark` (ms within the UTC minute, 0..59999) by choosing the
/// minute that puts it nearest the receive time. `secMark >= 60000` means unavailable.
pub fn sec_mark_us(sec_mark_ms: i64, recv_us: i64) -> Option<i64> {
    if !(0..60_000).contains(&sec_mark_ms) {
        return None;
    }
    let minute = recv_us.div_euclid(US_PER_MIN) * US_PER_MIN;
    let base = minute + sec_mark_ms * US_PER_MS;
    [base - US_PER_MIN, base, base + US_PER_MIN]
        .into_iter()
        .min_by_key(|t| (t - recv_us).abs())
}

/// `moy` (minutes since 1 January UTC of the receive year, 527040 = unavailable) plus
/// `secMark`. The year is the one that puts the result nearest the receive time, so a message
/// sent just before New Year and received just after lands in the old year.
pub fn moy_sec_mark_us(moy: i64, sec_mark_ms: i64, recv_us: i64) -> Option<i64> {
    if !(0..527_040).contains(&moy) || !(0..60_000).contains(&sec_mark_ms) {
        return None;
    }
    use chrono::{Datelike, TimeZone, Utc};
    let recv = Utc.timestamp_micros(recv_us).single()?;
    let offset = moy * US_PER_MIN + sec_mark_ms * US_PER_MS;
    [recv.year() - 1, recv.year(), recv.year() + 1]
        .into_iter()
        .filter_map(|y| Utc.with_ymd_and_hms(y, 1, 1, 0, 0, 0).single())
        .map(|start| start.timestamp_micros() + offset)
        .min_by_key(|t| (t - recv_us).abs())
}

const US_PER_HOUR: i64 = 3_600_000_000;

/// J2735 TimeMark (tenths of a second within the UTC hour, 0..35999) placed in the hour
/// nearest `reference_us`. 36000 ("more than an hour") and 36001 (unknown) give `None`.
pub fn time_mark_us(tenths: i64, reference_us: i64) -> Option<i64> {
    if !(0..36_000).contains(&tenths) {
        return None;
    }
    let base = reference_us.div_euclid(US_PER_HOUR) * US_PER_HOUR + tenths * 100_000;
    [base - US_PER_HOUR, base, base + US_PER_HOUR]
        .into_iter()
        .min_by_key(|t| (t - reference_us).abs())
}

/// Seconds from `event_us` until the next TimeMark `tenths` (in the current or the next
/// hour, as J2735 defines it): always in `[0, 3600)`.
pub fn time_mark_after_s(tenths: f64, event_us: i64) -> f64 {
    let mark_s = tenths / 10.0;
    let event_s = event_us.rem_euclid(US_PER_HOUR) as f64 / 1e6;
    (mark_s - event_s).rem_euclid(3600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        parse_rfc3339_us(s).unwrap()
    }

    #[test]
    fn sec_mark_same_minute() {
        let recv = us("2026-11-28T09:15:30.500Z");
        assert_eq!(sec_mark_us(30_000, recv), Some(us("2026-11-28T09:15:30Z")));
    }

    #[test]
    fn sec_mark_minute_rollover_backwards() {
        // Sent at :59.900 of 09:15, received at 09:16:00.200.
        let recv = us("2026-11-28T09:16:00.200Z");
        assert_eq!(
            sec_mark_us(59_900, recv),
            Some(us("2026-11-28T09:15:59.900Z"))
        );
    }

    #[test]
    fn sec_mark_hour_and_day_rollover() {
        let recv = us("2026-11-28T23:59:59.950Z");
        // Device clock slightly ahead: already in the next minute, next hour, next day.
        assert_eq!(sec_mark_us(100, recv), Some(us("2026-11-29T00:00:00.100Z")));
        let recv = us("2026-11-29T00:00:00.050Z");
        assert_eq!(
            sec_mark_us(59_990, recv),
            Some(us("2026-11-28T23:59:59.990Z"))
        );
    }

    #[test]
    fn sec_mark_unavailable() {
        let recv = us("2026-11-28T09:15:30Z");
        assert_eq!(sec_mark_us(60_000, recv), None);
        assert_eq!(sec_mark_us(65_535, recv), None);
        assert_eq!(sec_mark_us(-1, recv), None);
    }

    #[test]
    fn moy_across_new_year() {
        // moy of 31 Dec 23:59 in 2026, received 1 Jan 2027 00:00:01.
        let moy_dec31_2359 = 364 * 1440 + 23 * 60 + 59;
        let recv = us("2027-01-01T00:00:01Z");
        assert_eq!(
            moy_sec_mark_us(moy_dec31_2359, 59_000, recv),
            Some(us("2026-12-31T23:59:59Z"))
        );
        assert_eq!(moy_sec_mark_us(527_040, 0, recv), None);
    }

    #[test]
    fn time_mark_nearest_hour_and_countdown() {
        let reference = us("2022-10-18T23:02:53.824Z");
        // 2212.0 s into the hour: 22:36:52 (26 min before) is nearer than 23:36:52.
        assert_eq!(
            time_mark_us(22_120, reference),
            Some(us("2022-10-18T22:36:52Z"))
        );
        assert_eq!(
            time_mark_us(1_000, reference),
            Some(us("2022-10-18T23:01:40Z"))
        );
        // 35:59.9 seen just after the hour turned is the hour before.
        assert_eq!(
            time_mark_us(35_999, us("2022-10-19T00:00:01Z")),
            Some(us("2022-10-18T23:59:59.900Z"))
        );
        assert_eq!(time_mark_us(36_000, reference), None);
        assert_eq!(time_mark_us(36_001, reference), None);
        // Countdown from 23:02:35.176 to the mark at 36:52.0 of the hour: 2056.824 s.
        let event = us("2022-10-18T23:02:35.176Z");
        assert!((time_mark_after_s(22_120.0, event) - 2_056.824).abs() < 1e-9);
        // A mark just behind the event is in the next hour, never negative.
        assert!((time_mark_after_s(1_551.0, event) - 3_599.924).abs() < 1e-9);
    }

    #[test]
    fn epoch_magnitudes() {
        let t = us("2022-09-29T03:50:15Z");
        assert_eq!(epoch_auto_us(1664423415.0), Some(t));
        assert_eq!(epoch_auto_us(1664423415000.0), Some(t));
        assert_eq!(epoch_auto_us(1664423415000000.0), Some(t));
        assert_eq!(parse_text_auto_us("1664423415000"), Some(t));
        assert_eq!(epoch_auto_us(0.0), None);
        assert_eq!(epoch_auto_us(f64::NAN), None);
    }

    #[test]
    fn text_forms() {
        let t = us("2022-09-29T03:50:15.250Z");
        assert_eq!(parse_text_auto_us("2022-09-29T11:50:15.250+08:00"), Some(t));
        assert_eq!(parse_text_auto_us("2022-09-29 11:50:15.250"), Some(t));
        assert_eq!(parse_text_auto_us("not a time"), None);
    }
}
