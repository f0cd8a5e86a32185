//! Prices typed by people (`19.99 USD`) to the catalog's minor units and back.

use anyhow::bail;

/// Digits after the decimal point of a currency (ISO 4217 minor unit exponent). Most currencies
/// have two; these are the common exceptions.
pub fn exponent(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    let currency = currency.to_ascii_uppercase();
    if ZERO.contains(&currency.as_str()) {
        0
    } else if THREE.contains(&currency.as_str()) {
        3
    } else {
        2
    }
}

/// `"19.99"` in `USD` → `1999`. Refuses more decimals than the currency has, signs and
/// anything that is not a plain decimal number.
pub fn parse_minor(amount: &str, currency: &str) -> anyhow::Result<i64> {
    let exponent = exponent(currency);
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let digits_only = |text: &str| text.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
        bail!("price {amount:?} is not a decimal number like 19.99");
    }
    if fraction.len() > exponent as usize {
        bail!("price {amount:?} has more than {exponent} decimals, the minor unit of {currency}");
    }
    let scale = 10_i64.pow(exponent);
    let whole: i64 = whole
        .parse()
        .map_err(|_| anyhow::anyhow!("price {amount:?} is too large"))?;
    let fraction_value: i64 = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<i64>()? * 10_i64.pow(exponent - fraction.len() as u32)
    };
    whole
        .checked_mul(scale)
        .and_then(|minor| minor.checked_add(fraction_value))
        .ok_or_else(|| anyhow::anyhow!("price {amount:?} is too large"))
}

/// `1999` in `USD` → `"19.99"`.
pub fn format_minor(amount_minor: i64, currency: &str) -> String {
    let exponent = exponent(currency);
    if exponent == 0 {
        return amount_minor.to_string();
    }
    let scale = 10_i64.pow(exponent);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let magnitude = amount_minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale as u64,
        magnitude % scale as u64,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_currency_exponent() {
        assert_eq!(parse_minor("19.99", "USD").unwrap(), 1999);
        assert_eq!(parse_minor("19.9", "eur").unwrap(), 1990);
        assert_eq!(parse_minor("19", "USD").unwrap(), 1900);
        assert_eq!(parse_minor("1500", "JPY").unwrap(), 1500);
        assert_eq!(parse_minor("1.005", "KWD").unwrap(), 1005);
        assert_eq!(parse_minor("0.01", "USD").unwrap(), 1);
    }

    #[test]
    fn refuses_what_is_not_a_plain_price() {
        for (amount, currency) in [
            ("19.999", "USD"),
            ("1.5", "JPY"),
            ("-1", "USD"),
            ("", "USD"),
            (".5", "USD"),
            ("1e3", "USD"),
            ("99999999999999999999", "USD"),
        ] {
            assert!(
                parse_minor(amount, currency).is_err(),
                "{amount} {currency}"
            );
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_minor(1999, "USD"), "19.99");
        assert_eq!(format_minor(5, "USD"), "0.05");
        assert_eq!(format_minor(1500, "JPY"), "1500");
        assert_eq!(format_minor(1005, "KWD"), "1.005");
    }
}
