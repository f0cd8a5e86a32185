//! Pure input rules (no I/O), as documented in `proto/storemesh/catalog/v1/catalog.proto`.
//! Lengths count Unicode scalar values (`char`s), as the contract says.

use storemesh_proto::catalog::v1 as pb;
use storemesh_runtime::error::Violations;

pub const MAX_ID_CHARS: usize = 64;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 32;
pub const MAX_VARIANT_NAME_CHARS: usize = 32;
pub const MAX_IMAGES_PER_PRODUCT: usize = 100;
pub const MAX_REASON_CHARS: usize = 1024;
pub const MAX_EVENT_ID_CHARS: usize = 64;
pub const MAX_PAGE_TOKEN_CHARS: usize = 1024;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

/// The paths `UpdateProduct` accepts in its field mask.
pub const UPDATABLE_PATHS: &[&str] = &[
    "title",
    "description",
    "price",
    "tags",
    "primary_image_id",
    "visibility",
];

/// Media types accepted for originals.
pub const CONTENT_TYPES: &[&str] = &["image/jpeg", "image/png", "image/webp", "image/gif"];

/// ISO 4217 codes of currencies a price can be in: the active national and regional
/// currencies; fund, precious-metal and testing codes (`XAU`, `XTS`, `USN`, ...) are left out.
/// Sorted, for binary search.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

pub fn currency_known(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// Product, image and user ids: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub const ID_RULE: &str = "must be 1 to 64 characters of [A-Za-z0-9_-]";

/// Adds a violation unless `value` is a valid id.
pub fn check_id(violations: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        violations.add(field, "must not be empty");
    } else if !is_id(value) {
        violations.add(field, ID_RULE);
    }
}

/// Tags and variant names: 1 to 32 characters of `[a-z0-9-]`.
pub fn is_slug(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub fn title_problem(title: &str) -> Option<&'static str> {
    if title.trim().is_empty() {
        return Some("must not be empty or only whitespace");
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Some("must be at most 200 characters");
    }
    if title.chars().any(char::is_control) {
        return Some("must not contain control characters");
    }
    None
}

pub fn description_problem(description: &str) -> Option<&'static str> {
    // Checked on bytes first so a huge description is refused without counting every char.
    if description.len() > MAX_DESCRIPTION_CHARS * 4
        || description.chars().count() > MAX_DESCRIPTION_CHARS
    {
        return Some("must be at most 10000 characters");
    }
    if description
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Some("must not contain control characters other than line breaks and tabs");
    }
    None
}

/// Checks tags under `field` and returns them in order with duplicates removed.
pub fn tags(violations: &mut Violations, field: &str, tags: &[String]) -> Vec<String> {
    let mut unique: Vec<String> = Vec::with_capacity(tags.len().min(MAX_TAGS));
    let mut bad = false;
    for (index, tag) in tags.iter().enumerate() {
        if !is_slug(tag, MAX_TAG_CHARS) {
            bad = true;
            violations.add(
                format!("{field}[{index}]"),
                "must be 1 to 32 characters of [a-z0-9-]",
            );
        } else if !unique.contains(tag) {
            unique.push(tag.clone());
        }
        if index > 4 * MAX_TAGS {
            break; // enough to report; a flood of tags gets no more work
        }
    }
    if !bad && unique.len() > MAX_TAGS {
        violations.add(field, "must have at most 20 distinct tags");
    }
    unique
}

/// Checks a price under `field` (`price` or `product.price`).
pub fn price(violations: &mut Violations, field: &str, price: Option<&pb::Money>) {
    let Some(price) = price else {
        violations.add(field, "is required");
        return;
    };
    if price.amount_minor < 0 {
        violations.add(format!("{field}.amount_minor"), "must be 0 or more");
    }
    let code = &price.currency_code;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        violations.add(
            format!("{field}.currency_code"),
            "must be an ISO 4217 code of 3 uppercase letters, e.g. EUR",
        );
    } else if !currency_known(code) {
        violations.add(
            format!("{field}.currency_code"),
            "is not a currency known to the catalog",
        );
    }
}

/// `page_size` as the number of items to return.
pub fn page_size(violations: &mut Violations, requested: i32) -> usize {
    match usize::try_from(requested) {
        Err(_) => {
            violations.add("page_size", "must not be negative");
            DEFAULT_PAGE_SIZE
        }
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(size) => size.min(MAX_PAGE_SIZE),
    }
}

/// An image format's file extension, or `None` for `IMAGE_FORMAT_UNSPECIFIED` / unknown values.
pub fn format_extension(format: i32) -> Option<&'static str> {
    match pb::ImageFormat::try_from(format).ok()? {
        pb::ImageFormat::Jpeg => Some("jpg"),
        pb::ImageFormat::Png => Some("png"),
        pb::ImageFormat::Webp => Some("webp"),
        pb::ImageFormat::Gif => Some("gif"),
        pb::ImageFormat::Unspecified => None,
    }
}

/// The storage key of an original: `products/{product_id}/originals/{image_id}`.
pub fn original_key(product_id: &str, image_id: &str) -> String {
    format!("products/{product_id}/originals/{image_id}")
}

/// The storage key of a thumbnail: `products/{product_id}/thumbnails/{image_id}/{name}.{ext}`.
pub fn thumbnail_key(product_id: &str, image_id: &str, name: &str, ext: &str) -> String {
    format!("products/{product_id}/thumbnails/{image_id}/{name}.{ext}")
}

/// Checks the parts of a variant that do not depend on the stored image (the storage key is
/// checked against the image once it is loaded).
pub fn variant(violations: &mut Violations, variant: Option<&pb::ImageVariant>) {
    let Some(variant) = variant else {
        violations.add("variant", "is required");
        return;
    };
    if !is_slug(&variant.name, MAX_VARIANT_NAME_CHARS) {
        violations.add("variant.name", "must be 1 to 32 characters of [a-z0-9-]");
    }
    if variant.width == 0 {
        violations.add("variant.width", "must be 1 or more");
    }
    if variant.height == 0 {
        violations.add("variant.height", "must be 1 or more");
    }
    if format_extension(variant.format).is_none() {
        violations.add(
            "variant.format",
            "must be IMAGE_FORMAT_JPEG, IMAGE_FORMAT_PNG, IMAGE_FORMAT_WEBP or IMAGE_FORMAT_GIF",
        );
    }
    if variant.storage_key.is_empty() {
        violations.add("variant.storage_key", "must not be empty");
    }
    if let Some(problem) = sha256_problem(&variant.sha256) {
        violations.add("variant.sha256", problem);
    }
}

/// SHA-256 digests: empty (unknown) or 64 lowercase hexadecimal characters.
pub fn sha256_problem(digest: &str) -> Option<&'static str> {
    let valid = digest.is_empty()
        || (digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    (!valid).then_some("must be empty or 64 lowercase hexadecimal characters")
}

/// Event ids: 1 to 64 characters without control characters.
pub fn event_id_problem(event_id: &str, required: bool) -> Option<&'static str> {
    if event_id.is_empty() {
        return required.then_some("must not be empty");
    }
    if event_id.chars().count() > MAX_EVENT_ID_CHARS || event_id.chars().any(char::is_control) {
        return Some("must be at most 64 characters without control characters");
    }
    None
}

pub fn reason_problem(reason: &str) -> Option<&'static str> {
    if reason.trim().is_empty() {
        return Some("must not be empty");
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Some("must be at most 1024 characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(violations: Violations) -> Vec<String> {
        match violations.into_result() {
            Ok(()) => Vec::new(),
            Err(storemesh_runtime::ServiceError::InvalidArgument(list)) => {
                list.into_iter().map(|v| v.field).collect()
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn currency_list_is_sorted_and_checked() {
        assert!(CURRENCIES.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(currency_known("EUR") && currency_known("JPY") && currency_known("USD"));
        assert!(!currency_known("XXX") && !currency_known("ABC") && !currency_known("usd"));
    }

    #[test]
    fn ids_and_slugs() {
        assert!(is_id("01HZX3Q5W4N7Y8Z9A0B1C2D3E4"));
        assert!(is_id("a_b-C9"));
        assert!(!is_id(""));
        assert!(!is_id("a/b"));
        assert!(!is_id(&"x".repeat(65)));
        assert!(is_slug("summer-2024", 32));
        assert!(!is_slug("Summer", 32));
        assert!(!is_slug("", 32));
        assert!(!is_slug(&"a".repeat(33), 32));
    }

    #[test]
    fn titles_and_descriptions() {
        assert_eq!(title_problem("Mug"), None);
        assert!(title_problem("   ").is_some());
        assert!(title_problem("a\u{7}b").is_some());
        assert_eq!(title_problem(&"é".repeat(200)), None, "chars, not bytes");
        assert!(title_problem(&"é".repeat(201)).is_some());
        assert_eq!(description_problem(""), None);
        assert_eq!(description_problem("line\nbreak\tand tab\r\n"), None);
        assert!(description_problem("bell\u{7}").is_some());
        assert_eq!(description_problem(&"é".repeat(10_000)), None);
        assert!(description_problem(&"a".repeat(10_001)).is_some());
        assert!(description_problem(&"a".repeat(10_000_000)).is_some());
    }

    #[test]
    fn tags_are_deduplicated_in_order() {
        let mut violations = Violations::new();
        let given: Vec<String> = ["b", "a", "b", "c"].map(String::from).to_vec();
        assert_eq!(tags(&mut violations, "tags", &given), ["b", "a", "c"]);
        assert!(violations.is_empty());

        let mut violations = Violations::new();
        let given: Vec<String> = ["ok", "Bad", "", "fine"].map(String::from).to_vec();
        tags(&mut violations, "tags", &given);
        assert_eq!(fields(violations), ["tags[1]", "tags[2]"]);

        let mut violations = Violations::new();
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        tags(&mut violations, "product.tags", &many);
        assert_eq!(fields(violations), ["product.tags"]);
        let mut violations = Violations::new();
        let repeated: Vec<String> = (0..40).map(|i| format!("t{}", i % 20)).collect();
        assert_eq!(tags(&mut violations, "tags", &repeated).len(), 20);
        assert!(violations.is_empty(), "20 distinct after dedup is fine");
    }

    #[test]
    fn prices() {
        let money = |amount: i64, code: &str| pb::Money {
            amount_minor: amount,
            currency_code: code.into(),
        };
        let check = |price: Option<pb::Money>| {
            let mut violations = Violations::new();
            self::price(&mut violations, "price", price.as_ref());
            fields(violations)
        };
        assert!(check(Some(money(1999, "USD"))).is_empty());
        assert!(check(Some(money(0, "JPY"))).is_empty());
        assert_eq!(check(None), ["price"]);
        assert_eq!(
            check(Some(money(-1, "usd"))),
            ["price.amount_minor", "price.currency_code"]
        );
        assert_eq!(check(Some(money(5, "ZZZ"))), ["price.currency_code"]);
    }

    #[test]
    fn page_sizes() {
        let mut violations = Violations::new();
        assert_eq!(page_size(&mut violations, 0), 50);
        assert_eq!(page_size(&mut violations, 7), 7);
        assert_eq!(page_size(&mut violations, 10_000), 500);
        assert!(violations.is_empty());
        page_size(&mut violations, -1);
        assert_eq!(fields(violations), ["page_size"]);
    }

    #[test]
    fn variants() {
        let good = pb::ImageVariant {
            name: "w320".into(),
            width: 320,
            height: 200,
            format: pb::ImageFormat::Jpeg.into(),
            storage_key: "products/p/thumbnails/i/w320.jpg".into(),
            size_bytes: 1000,
            sha256: "0123456789abcdef".repeat(4),
            ..Default::default()
        };
        let mut violations = Violations::new();
        variant(&mut violations, Some(&good));
        assert!(violations.is_empty());
        let bad = pb::ImageVariant {
            name: "W 320".into(),
            width: 0,
            height: 0,
            format: 0,
            storage_key: String::new(),
            size_bytes: 0,
            sha256: "0123456789ABCDEF".repeat(4),
            ..Default::default()
        };
        let mut violations = Violations::new();
        variant(&mut violations, Some(&bad));
        assert_eq!(
            fields(violations),
            [
                "variant.name",
                "variant.width",
                "variant.height",
                "variant.format",
                "variant.storage_key",
                "variant.sha256"
            ]
        );
        assert_eq!(format_extension(pb::ImageFormat::Webp.into()), Some("webp"));
        assert_eq!(format_extension(99), None);
    }

    #[test]
    fn sha256_digests() {
        assert_eq!(sha256_problem(""), None);
        assert_eq!(sha256_problem(&"a1".repeat(32)), None);
        assert!(sha256_problem(&"A1".repeat(32)).is_some(), "uppercase");
        assert!(sha256_problem(&"a1".repeat(31)).is_some(), "too short");
        assert!(sha256_problem(&"g1".repeat(32)).is_some(), "not hex");
        assert!(sha256_problem(&"é".repeat(32)).is_some());
    }

    #[test]
    fn event_ids_and_reasons() {
        assert_eq!(event_id_problem("01HZX3Q5W4N7Y8Z9A0B1C2D3E4", true), None);
        assert!(event_id_problem("", true).is_some());
        assert_eq!(event_id_problem("", false), None);
        assert!(event_id_problem(&"e".repeat(65), false).is_some());
        assert_eq!(reason_problem("cannot decode"), None);
        assert!(reason_problem(" ").is_some());
        assert!(reason_problem(&"r".repeat(1025)).is_some());
    }
}
