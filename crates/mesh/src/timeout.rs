//! The `grpc-timeout` header: `<1..8 digits><unit>` with unit `H`, `M`, `S`, `m`, `u`, `n`.

use std::time::Duration;

/// Parses a `grpc-timeout` value; `None` when malformed (treated as absent, like grpc-go).
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a duration as the most precise `grpc-timeout` that fits in 8 digits, rounding up
/// so a propagated deadline never becomes shorter than a whole unit of what is left.
pub fn format(duration: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = duration.as_nanos().max(1);
    for (unit, per) in [
        ("n", 1_u128),
        ("u", 1_000),
        ("m", 1_000_000),
        ("S", 1_000_000_000),
        ("M", 60_000_000_000),
        ("H", 3_600_000_000_000),
    ] {
        let amount = nanos.div_ceil(per);
        if amount <= MAX {
            return format!("{amount}{unit}");
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S", " 1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_within_eight_digits_and_round_trips() {
        for duration in [
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 365),
        ] {
            let text = format(duration);
            assert!(text.len() <= 9, "{text}");
            assert!(parse(&text).unwrap() >= duration, "{text} ≥ {duration:?}");
        }
        assert_eq!(format(Duration::from_millis(1500)), "1500000u");
    }
}
