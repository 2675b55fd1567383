//! RFC 3339 timestamps of records and filters, read as instants so that records sort by
//! when they happened whatever the precision or offset their text uses.

use crate::record::Timestamp;

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub type Instant = i128;

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = i64::from((month + 9) % 12);
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z` or `±HH:MM`; the fraction has
/// at most nine digits.
pub fn parse(text: &str) -> Result<Instant, String> {
    let bad = |why: &str| {
        format!("timestamp {text:?} is not RFC 3339 (YYYY-MM-DDTHH:MM:SS[.fraction]Z): {why}")
    };
    let b = text.as_bytes();
    if b.len() < 20 {
        return Err(bad("too short"));
    }
    let digits = |from: usize, to: usize| -> Result<u32, String> {
        let mut value = 0u32;
        for &c in &b[from..to] {
            if !c.is_ascii_digit() {
                return Err(bad("a digit was expected"));
            }
            value = value * 10 + u32::from(c - b'0');
        }
        Ok(value)
    };
    for (at, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        if b[at] != sep {
            return Err(bad(&format!(
                "'{}' expected at position {}",
                sep as char,
                at + 1
            )));
        }
    }
    let year = i64::from(digits(0, 4)?);
    let month = digits(5, 7)?;
    let day = digits(8, 10)?;
    let (hour, minute, second) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day (leap seconds are not accepted)"));
    }
    let mut at = 19;
    let mut nanos = 0i128;
    if b[at] == b'.' {
        let start = at + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let count = end - start;
        if count == 0 || count > 9 {
            return Err(bad("the fraction of a second needs 1 to 9 digits"));
        }
        nanos = i128::from(digits(start, end)?) * 10i128.pow((9 - count) as u32);
        at = end;
    }
    let rest = &b[at..];
    let offset_secs = if rest == b"Z" {
        0
    } else if rest.len() == 6 && matches!(rest[0], b'+' | b'-') && rest[3] == b':' {
        let (h, m) = (digits(at + 1, at + 3)?, digits(at + 4, at + 6)?);
        if h > 23 || m > 59 {
            return Err(bad("no such offset"));
        }
        let secs = i64::from(h * 3600 + m * 60);
        if rest[0] == b'-' {
            -secs
        } else {
            secs
        }
    } else {
        return Err(bad("'Z' or an offset like +02:00 must end it"));
    };
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second)
        - offset_secs;
    // An offset can carry a date across the ends of the four-digit years; such an instant
    // could not be written back in this form (a bundle names its filters and records in
    // UTC), so it is refused rather than written in a form nothing reads.
    if !(days_from_civil(0, 1, 1) * 86_400..days_from_civil(10_000, 1, 1) * 86_400).contains(&secs)
    {
        return Err(bad("in UTC it falls outside the years 0000 to 9999"));
    }
    Ok(i128::from(secs) * 1_000_000_000 + nanos)
}

/// The instant as records write it: UTC, nine fractional digits.
pub fn format(instant: Instant) -> String {
    Timestamp::from_unix_ns(instant).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_of_every_form() {
        let base = parse("2026-11-22T05:41:21.123456789Z").unwrap();
        assert_eq!(format(base), "2026-11-22T05:41:21.123456789Z");
        assert_eq!(parse("2026-11-22T07:41:21.123456789+02:00"), Ok(base));
        assert!(parse("2026-11-22T05:41:21.1234567890Z")
            .unwrap_err()
            .contains("1 to 9 digits"));
        assert_eq!(parse("2026-11-22T05:41:21Z"), Ok(base - 123_456_789));
        assert_eq!(
            parse("2026-11-22T05:41:21.5Z"),
            Ok(base - 123_456_789 + 500_000_000)
        );
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(0));
        // The ends of the range, written back as they were read.
        for text in [
            "0000-01-01T00:00:00.000000000Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(parse("1969-12-31T23:59:59.999999999Z"), Ok(-1));
        assert_eq!(
            parse("2000-03-01T00:00:00Z"),
            Ok(951_868_800 * 1_000_000_000)
        );
        assert_eq!(
            parse("2024-02-29T00:00:00-00:30"),
            Ok((1_709_164_800 + 1800) * 1_000_000_000)
        );
    }

    #[test]
    fn what_is_not_a_timestamp_says_why() {
        for (text, why) in [
            ("2026-11-22 05:41:21Z", "'T' expected at position 11"),
            ("2026-02-29T00:00:00Z", "no such date"),
            ("2026-13-01T00:00:00Z", "no such date"),
            ("2026-11-22T24:00:00Z", "no such time"),
            ("2026-11-22T23:59:60Z", "leap seconds"),
            ("2026-11-22T05:41:21", "too short"),
            ("2026-11-22T05:41:21.Z", "1 to 9 digits"),
            ("2026-11-22T05:41:21+0200", "'Z' or an offset"),
            ("2026-11-22T05:41:21z", "'Z' or an offset"),
            ("2026-1x-22T05:41:21Z", "a digit was expected"),
            (
                "9999-12-31T23:30:00-01:00",
                "outside the years 0000 to 9999",
            ),
            (
                "0000-01-01T00:30:00+01:00",
                "outside the years 0000 to 9999",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn the_calendar_agrees_with_the_formatter_for_four_centuries() {
        let mut day = days_from_civil(1970, 1, 1);
        assert_eq!(day, 0);
        day = days_from_civil(1800, 1, 1);
        let last = days_from_civil(2200, 1, 1);
        while day < last {
            let text = format(i128::from(day) * 86_400 * 1_000_000_000);
            assert_eq!(
                parse(&text),
                Ok(i128::from(day) * 86_400 * 1_000_000_000),
                "{text}"
            );
            day += 1;
        }
    }
}
