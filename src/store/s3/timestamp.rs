//! Timestamps in S3 listings.

/// Milliseconds since the Unix epoch of an S3 `LastModified` timestamp
/// (`2026-11-23T17:47:40.000Z`; fractional seconds and a `Z` or `+00:00` suffix optional).
pub(super) fn parse_timestamp_ms(text: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = text.get(range)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    };
    let bytes = text.as_bytes();
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if year < 1970
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut millis = 0;
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<u64>().ok()?;
        rest = &fraction[digits..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "") {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let (y, m) = if month <= 2 {
        (year.checked_sub(1)?, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_modified_timestamps_parse() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp_ms("2026-11-23T17:47:40.123Z"),
            Some(1_795_456_060_123)
        );
        assert_eq!(
            parse_timestamp_ms("2000-02-29T00:00:01.5Z"),
            Some(951_782_401_500)
        );
        assert_eq!(parse_timestamp_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp_ms("yesterday"), None);
        assert_eq!(parse_timestamp_ms("2026-11-23T17:47:40+02:00"), None);
        // A hostile server's dates before the epoch (year 0 used to underflow) are refused.
        assert_eq!(parse_timestamp_ms("0000-01-01T00:00:00Z"), None);
        assert_eq!(parse_timestamp_ms("1969-12-31T23:59:59Z"), None);
        assert_eq!(
            parse_timestamp_ms("9999-12-31T23:59:59.999Z").map(|ms| ms > 0),
            Some(true)
        );
    }

    proptest::proptest! {
        /// Whatever a server sends as LastModified, parsing returns, never panics.
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,9})?(Z|\\+00:00|.{0,3})",
            junk in proptest::prelude::any::<String>(),
        ) {
            let _ = parse_timestamp_ms(&text);
            let _ = parse_timestamp_ms(&junk);
        }
    }
}
