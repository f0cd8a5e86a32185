//! Upload header rules that are not about keys or content types (pure).

use std::collections::HashMap;

pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Every problem with user metadata, as `(entry, problem)` descriptions.
pub fn metadata_problems(metadata: &HashMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    if metadata.len() > MAX_METADATA_ENTRIES {
        problems.push(format!("at most {MAX_METADATA_ENTRIES} entries"));
    }
    let mut names: Vec<&String> = metadata.keys().collect();
    names.sort();
    for name in names {
        let shown: String = name.chars().take(MAX_METADATA_KEY_CHARS).collect();
        let good_name = !name.is_empty()
            && name.len() <= MAX_METADATA_KEY_CHARS
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !good_name {
            problems.push(format!(
                "key {shown:?}: must be 1 to 64 characters of [a-z0-9_.-]"
            ));
        }
        let value = metadata.get(name).map_or("", String::as_str);
        if value.len() > MAX_METADATA_VALUE_BYTES {
            problems.push(format!("value of {shown:?}: must be at most 1024 bytes"));
        } else if value.chars().any(char::is_control) {
            problems.push(format!(
                "value of {shown:?}: must not contain control characters"
            ));
        }
    }
    problems
}

/// Why an idempotency key is not acceptable, if it is not (empty means "none").
pub fn idempotency_key_problem(key: &str) -> Option<&'static str> {
    let good =
        key.len() <= MAX_IDEMPOTENCY_KEY_CHARS && key.bytes().all(|b| (0x20..0x7f).contains(&b));
    (!good).then_some("must be at most 128 printable ASCII characters")
}

/// Why an expected SHA-256 is not acceptable, if it is not (empty means "not checked").
pub fn sha256_problem(hex: &str) -> Option<&'static str> {
    let good = hex.is_empty()
        || (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    (!good).then_some("must be 64 lowercase hexadecimal characters")
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_rules() {
        assert!(metadata_problems(&map(&[("variant", "w320"), ("width", "320")])).is_empty());
        assert!(metadata_problems(&map(&[("a.b_c-1", &"v".repeat(1024))])).is_empty());
        assert_eq!(metadata_problems(&map(&[("Upper", "x")])).len(), 1);
        assert_eq!(metadata_problems(&map(&[("", "x")])).len(), 1);
        assert_eq!(metadata_problems(&map(&[(&"k".repeat(65), "x")])).len(), 1);
        assert_eq!(
            metadata_problems(&map(&[("k", &"v".repeat(1025))])).len(),
            1
        );
        assert_eq!(metadata_problems(&map(&[("k", "line\nbreak")])).len(), 1);
        let many: HashMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(metadata_problems(&many).len(), 1);
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key_problem(""), None);
        assert_eq!(idempotency_key_problem("upload-1 ~!"), None);
        assert_eq!(idempotency_key_problem(&"k".repeat(128)), None);
        assert!(idempotency_key_problem(&"k".repeat(129)).is_some());
        assert!(idempotency_key_problem("tab\there").is_some());
        assert!(idempotency_key_problem("é").is_some());
    }

    #[test]
    fn sha256_hex() {
        assert_eq!(sha256_problem(""), None);
        assert_eq!(sha256_problem(&"a1".repeat(32)), None);
        assert!(sha256_problem(&"A1".repeat(32)).is_some());
        assert!(sha256_problem("abc").is_some());
        assert!(sha256_problem(&"g".repeat(64)).is_some());
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
