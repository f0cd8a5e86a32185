//! Pure HTTP rules of the images function: byte ranges, conditional requests (RFC 9110
//! sections 13 and 14) and HTTP-dates. No I/O, so all of it is unit-tested natively.

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No range, one that is ignored (malformed, another unit, several ranges): `200`.
    Full,
    /// Bytes `start..=end`: `206`.
    Partial { start: u64, end: u64 },
    /// `416` with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// A run of ASCII digits as a number, saturating (a position past any size is still a number).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0_u64, |value, b| {
        value.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Evaluates `Range` (`bytes=a-b`, `bytes=a-`, `bytes=-n`). Several ranges get the whole
/// representation: allowed by RFC 9110 (a server may ignore `Range`), and it spares a
/// `multipart/byteranges` body nobody here needs.
pub fn range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(header) = header else {
        return RangeAnswer::Full;
    };
    let header = header.trim();
    let Some((unit, set)) = header.split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|spec| !spec.is_empty())
        .collect();
    let [spec] = specs.as_slice() else {
        return RangeAnswer::Full;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match digits(last) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if size == 0 => RangeAnswer::Unsatisfiable,
            Some(suffix) => RangeAnswer::Partial {
                start: size.saturating_sub(suffix),
                end: size - 1,
            },
        },
        // `a-` or `a-b`.
        (false, _) => {
            let Some(start) = digits(first) else {
                return RangeAnswer::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match digits(last) {
                    Some(end) if end >= start => end,
                    // `b < a` or garbage: an invalid range set, which is ignored.
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= size {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start,
                end: end.min(size - 1),
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// The opaque part of an entity tag and whether it is weak: `W/"x"` → (`"x"`, true).
fn entity_tag(text: &str) -> Option<(&str, bool)> {
    let text = text.trim();
    let (tag, weak) = match text.strip_prefix("W/") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    (tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"')).then_some((tag, weak))
}

/// `If-None-Match` against our (strong) `etag`, with the weak comparison RFC 9110 requires
/// there: `*` matches any current representation, and `W/"x"` matches `"x"`.
pub fn none_match_hits(if_none_match: &str, etag: Option<&str>) -> bool {
    if if_none_match.trim() == "*" {
        return true;
    }
    let Some(etag) = etag else {
        return false;
    };
    if_none_match
        .split(',')
        .filter_map(entity_tag)
        .any(|(tag, _)| tag == etag)
}

/// Whether to answer `304`: `If-None-Match` when present, else `If-Modified-Since` (an invalid
/// date is ignored, as RFC 9110 says).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<u64>,
) -> bool {
    if let Some(if_none_match) = if_none_match {
        return none_match_hits(if_none_match, etag);
    }
    match (if_modified_since.and_then(parse_http_date), last_modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Whether `If-Range` lets a `Range` apply: no header, a strong entity tag equal to ours, or a
/// date equal to `Last-Modified`. Anything else (a weak tag, another tag or date) means the
/// client's partial copy is stale, and the whole representation is sent.
pub fn if_range_holds(
    if_range: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<u64>,
) -> bool {
    let Some(if_range) = if_range else {
        return true;
    };
    let if_range = if_range.trim();
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        return match (entity_tag(if_range), etag) {
            (Some((tag, false)), Some(etag)) => tag == etag,
            _ => false,
        };
    }
    matches!(
        (parse_http_date(if_range), last_modified),
        (Some(date), Some(modified)) if date == modified
    )
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 → (year, month 1-12, day 1-31); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// (year, month 1-12, day 1-31) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(i64::MAX / 2);
    let seconds = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)];
    let month = MONTHS[(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn month_number(name: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|month| *month == name)
        .and_then(|index| u32::try_from(index + 1).ok())
}

fn time_of_day(text: &str) -> Option<u64> {
    let mut parts = text.split(':');
    let (hour, minute, second) = (
        digits(parts.next()?)?,
        digits(parts.next()?)?,
        digits(parts.next()?)?,
    );
    if parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(hour * 3600 + minute * 60 + second)
}

fn unix(year: i64, month: u32, day: u64, time: u64) -> Option<u64> {
    if !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, u32::try_from(day).ok()?);
    u64::try_from(days)
        .ok()?
        .checked_mul(86_400)?
        .checked_add(time)
}

/// An HTTP-date in any of the three formats a recipient must accept (RFC 9110 5.6.7):
/// IMF-fixdate, the obsolete RFC 850 form and asctime; as unix seconds.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let text = text.trim();
    let (_, rest) = text.split_once(' ')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    match fields.as_slice() {
        // `Sun, 06 Nov 1994 08:49:37 GMT`
        [day, month, year, time, "GMT"] if text.as_bytes().get(3) == Some(&b',') => unix(
            i64::try_from(digits(year).filter(|_| year.len() == 4)?).ok()?,
            month_number(month)?,
            digits(day)?,
            time_of_day(time)?,
        ),
        // `Sunday, 06-Nov-94 08:49:37 GMT` (two-digit years: 70-99 → 19xx, else 20xx).
        [date, time, "GMT"] => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            let year = i64::try_from(digits(year).filter(|_| year.len() == 2)?).ok()?;
            let year = if year >= 70 { 1900 + year } else { 2000 + year };
            unix(year, month_number(month)?, digits(day)?, time_of_day(time)?)
        }
        // `Sun Nov  6 08:49:37 1994`
        [month, day, time, year] => unix(
            i64::try_from(digits(year).filter(|_| year.len() == 4)?).ok()?,
            month_number(month)?,
            digits(day)?,
            time_of_day(time)?,
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::{Full, Partial, Unsatisfiable};
        let size = 1000;
        let cases: [(Option<&str>, RangeAnswer); 20] = [
            (None, Full),
            (Some("bytes=0-99"), Partial { start: 0, end: 99 }),
            (Some("bytes=0-0"), Partial { start: 0, end: 0 }),
            (Some("BYTES = 10-19"), Partial { start: 10, end: 19 }),
            (
                Some("bytes=900-"),
                Partial {
                    start: 900,
                    end: 999,
                },
            ),
            (
                Some("bytes=900-5000"),
                Partial {
                    start: 900,
                    end: 999,
                },
            ),
            (
                Some("bytes=-100"),
                Partial {
                    start: 900,
                    end: 999,
                },
            ),
            (Some("bytes=-5000"), Partial { start: 0, end: 999 }),
            (
                Some("bytes=999-"),
                Partial {
                    start: 999,
                    end: 999,
                },
            ),
            (Some("bytes=1000-"), Unsatisfiable),
            (Some("bytes=1000-2000"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=99999999999999999999999-"), Unsatisfiable),
            (Some("bytes=0-1,5-9"), Full),
            (Some("bytes=20-10"), Full),
            (Some("bytes=a-b"), Full),
            (Some("bytes=-"), Full),
            (Some("items=0-1"), Full),
            (Some("bytes 0-1"), Full),
            (Some("bytes=+1-2"), Full),
        ];
        for (header, expected) in cases {
            assert_eq!(range(header, size), expected, "{header:?}");
        }
        assert_eq!(range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(range(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(
            range(Some("bytes=0-1, "), size),
            Partial { start: 0, end: 1 }
        );
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison() {
        let etag = Some("\"abc\"");
        assert!(none_match_hits("\"abc\"", etag));
        assert!(none_match_hits("W/\"abc\"", etag));
        assert!(none_match_hits("\"x\", W/\"abc\"", etag));
        assert!(none_match_hits(" * ", etag));
        assert!(none_match_hits("*", None));
        assert!(!none_match_hits("\"abd\"", etag));
        assert!(!none_match_hits("abc", etag));
        assert!(!none_match_hits("\"abc\"", None));
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let etag = Some("\"abc\"");
        let modified = Some(784_111_777);
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(not_modified(None, Some(date), etag, modified));
        assert!(not_modified(
            None,
            Some("Mon, 07 Nov 1994 00:00:00 GMT"),
            etag,
            modified
        ));
        assert!(!not_modified(
            None,
            Some("Sat, 05 Nov 1994 00:00:00 GMT"),
            etag,
            modified
        ));
        assert!(!not_modified(None, Some("yesterday"), etag, modified));
        assert!(!not_modified(Some("\"other\""), Some(date), etag, modified));
        assert!(not_modified(
            Some("\"abc\""),
            Some("Sat, 05 Nov 1994 00:00:00 GMT"),
            etag,
            modified
        ));
        assert!(!not_modified(None, None, etag, modified));
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let etag = Some("\"abc\"");
        let modified = Some(784_111_777);
        assert!(if_range_holds(None, etag, modified));
        assert!(if_range_holds(Some("\"abc\""), etag, modified));
        assert!(!if_range_holds(Some("W/\"abc\""), etag, modified));
        assert!(!if_range_holds(Some("\"old\""), etag, modified));
        assert!(if_range_holds(
            Some("Sun, 06 Nov 1994 08:49:37 GMT"),
            etag,
            modified
        ));
        assert!(!if_range_holds(
            Some("Sun, 06 Nov 1994 08:49:38 GMT"),
            etag,
            modified
        ));
        assert!(!if_range_holds(Some("garbage"), etag, modified));
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_767_225_599), "Wed, 31 Dec 2025 23:59:59 GMT");
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text), Some(784_111_777), "{text}");
        }
        for unix in [0, 951_782_400, 1_767_225_599, 4_102_444_800] {
            assert_eq!(parse_http_date(&http_date(unix)), Some(unix));
        }
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "1994-11-06T08:49:37Z",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
