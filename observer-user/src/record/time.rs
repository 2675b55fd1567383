//! UTC instants as records write them: ISO-8601 with nanoseconds.

use std::fmt;

/// A UTC instant with nanosecond precision; displays as ISO-8601 (`...T..:..:..nnnnnnnnnZ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    unix_ns: i128,
}

impl Timestamp {
    pub fn from_unix_ns(unix_ns: i128) -> Self {
        Timestamp { unix_ns }
    }

    pub fn unix_ns(&self) -> i128 {
        self.unix_ns
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, for years 0 to 9999 (else `None`).
    fn to_ascii(self) -> Option<[u8; 30]> {
        let secs = self.unix_ns.div_euclid(1_000_000_000);
        let nanos = u64::try_from(self.unix_ns.rem_euclid(1_000_000_000)).ok()?;
        let days = i64::try_from(secs.div_euclid(86_400)).ok()?;
        let second_of_day = u64::try_from(secs.rem_euclid(86_400)).ok()?;
        let (year, month, day) = civil_from_days(days);
        let year = u64::try_from(year).ok().filter(|&y| y <= 9999)?;
        let mut out = *b"0000-00-00T00:00:00.000000000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, u64::from(month));
        put(8, 2, u64::from(day));
        put(11, 2, second_of_day / 3600);
        put(14, 2, second_of_day / 60 % 60);
        put(17, 2, second_of_day % 60);
        put(20, 9, nanos);
        Some(out)
    }
}

impl Timestamp {
    /// The general form, for any year.
    fn write_any(self, f: &mut impl fmt::Write) -> fmt::Result {
        let secs = self.unix_ns.div_euclid(1_000_000_000);
        let nanos = self.unix_ns.rem_euclid(1_000_000_000);
        let days = i64::try_from(secs.div_euclid(86_400)).unwrap_or(0);
        let second_of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_ascii() {
            // Digits and punctuation: always UTF-8.
            Some(ascii) => f.write_str(std::str::from_utf8(&ascii).map_err(|_| fmt::Error)?),
            None => self.write_any(f),
        }
    }
}

impl Timestamp {
    /// The instant as a JSON string, as its `Serialize` writes it.
    pub fn write_json(self, out: &mut Vec<u8>) {
        out.push(b'"');
        match self.to_ascii() {
            Some(ascii) => out.extend_from_slice(&ascii),
            // Digits and punctuation only: nothing to escape.
            None => {
                let mut text = String::new();
                let _ = self.write_any(&mut text);
                out.extend_from_slice(text.as_bytes());
            }
        }
        out.push(b'"');
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ascii = self.to_ascii();
        match ascii.as_ref().and_then(|a| std::str::from_utf8(a).ok()) {
            Some(text) => serializer.serialize_str(text),
            None => serializer.collect_str(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            Timestamp::from_unix_ns(0).to_string(),
            "1970-01-01T00:00:00.000000000Z"
        );
        // 2000-02-29 (leap day in a century leap year) 12:34:56.000000789
        assert_eq!(
            Timestamp::from_unix_ns(951_827_696_000_000_789).to_string(),
            "2000-02-29T12:34:56.000000789Z"
        );
        // 2026-11-22T05:41:21.123456789Z
        assert_eq!(
            Timestamp::from_unix_ns(1_795_326_081_123_456_789).to_string(),
            "2026-11-22T05:41:21.123456789Z"
        );
        // 2100-03-01 (2100 is not a leap year)
        assert_eq!(
            Timestamp::from_unix_ns(4_107_542_400 * 1_000_000_000).to_string(),
            "2100-03-01T00:00:00.000000000Z"
        );
        assert_eq!(
            Timestamp::from_unix_ns(-1).to_string(),
            "1969-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn the_fast_form_matches_the_general_one() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // 1900 to 2300.
            let ns = i128::from(state % (400 * 365 * 86_400 * 1_000_000_000))
                - 70 * 365 * 86_400 * 1_000_000_000;
            let t = Timestamp::from_unix_ns(ns);
            let mut general = String::new();
            t.write_any(&mut general).unwrap();
            assert_eq!(t.to_string(), general, "{ns}");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{general}\""));
            let mut direct = Vec::new();
            t.write_json(&mut direct);
            assert_eq!(direct, format!("\"{general}\"").into_bytes());
        }
        // Beyond year 9999 the general form is used.
        let far = Timestamp::from_unix_ns(300_000_000_000 * 1_000_000_000);
        assert!(far.to_string().starts_with("11476-"), "{far}");
        let mut direct = Vec::new();
        far.write_json(&mut direct);
        assert_eq!(direct, serde_json::to_vec(&far).unwrap());
    }

    #[test]
    fn every_day_of_four_centuries_round_trips_through_the_calendar() {
        // Walk day by day and check the calendar advances one day at a time.
        let (mut y, mut m, mut d) = civil_from_days(-1);
        assert_eq!((y, m, d), (1969, 12, 31));
        for days in 0..146_097 {
            let next = civil_from_days(days);
            let days_in_month = match m {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
                _ => 28,
            };
            let expected = if d < days_in_month {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, expected, "day {days}");
            (y, m, d) = next;
        }
    }
}
