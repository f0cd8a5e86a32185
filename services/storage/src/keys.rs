//! Object keys: validation and classification (pure, no I/O).
//!
//! The rules are the contract's (`proto/storemesh/storage/v1/storage.proto`, "Keys"): 1 to 1024
//! bytes of UTF-8, `/`-separated segments, no leading `/`, no empty, `.` or `..` segments, no
//! control characters (U+0000–U+001F, U+007F) and no backslash.

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest `List` prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 1024;

fn forbidden_char(c: char) -> bool {
    c.is_ascii_control() || c == '\\'
}

/// Why `key` is not a valid object key, if it is not.
pub fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Some("must be at most 1024 bytes");
    }
    if key.chars().any(forbidden_char) {
        return Some("must not contain control characters or a backslash");
    }
    if key.starts_with('/') {
        return Some("must not start with `/`");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Some("must not contain empty segments (`//` or a trailing `/`)"),
            "." | ".." => return Some("must not contain `.` or `..` segments"),
            _ => {}
        }
    }
    None
}

/// Why `prefix` is not a valid `UploadHeader.key_prefix`, if it is not: it must end in `/` and
/// form a valid key once a generated id is appended.
pub fn key_prefix_problem(prefix: &str, generated_id: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        return Some("must not be empty");
    }
    if !prefix.ends_with('/') {
        return Some("must end with `/`");
    }
    key_problem(&format!("{prefix}{generated_id}"))
}

/// Why `prefix` is not a valid `List` prefix, if it is not (a plain byte prefix: only the
/// length and character rules apply).
pub fn list_prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.len() > MAX_PREFIX_BYTES {
        return Some("must be at most 1024 bytes");
    }
    if prefix.chars().any(forbidden_char) {
        return Some("must not contain control characters or a backslash");
    }
    None
}

/// Where a (valid) key lives in Storemesh's layout; authorization and the image rules follow
/// from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass<'a> {
    /// `products/{product_id}/originals/…`
    Original { product_id: &'a str },
    /// `products/{product_id}/thumbnails/…`
    Thumbnail { product_id: &'a str },
    /// Anything else under `products/`.
    OtherProduct,
    /// Anything outside `products/`.
    Other,
}

impl KeyClass<'_> {
    /// Image prefixes accept only JPEG, PNG, WebP and GIF, with a declared type that matches.
    pub fn is_image(self) -> bool {
        matches!(self, KeyClass::Original { .. } | KeyClass::Thumbnail { .. })
    }
}

pub fn classify(key: &str) -> KeyClass<'_> {
    let mut segments = key.splitn(4, '/');
    if segments.next() != Some("products") {
        return KeyClass::Other;
    }
    // "Under the prefix" needs at least one segment after `originals/` or `thumbnails/`.
    match (segments.next(), segments.next(), segments.next()) {
        (Some(product_id), Some("originals"), Some(rest)) if !rest.is_empty() => {
            KeyClass::Original { product_id }
        }
        (Some(product_id), Some("thumbnails"), Some(rest)) if !rest.is_empty() => {
            KeyClass::Thumbnail { product_id }
        }
        _ => KeyClass::OtherProduct,
    }
}

/// The product a key under `products/{product_id}/…` belongs to (at least one segment after
/// the product's).
pub fn product_of(key: &str) -> Option<&str> {
    let (product_id, rest) = key.strip_prefix("products/")?.split_once('/')?;
    (!product_id.is_empty() && !rest.is_empty()).then_some(product_id)
}

/// Catalog ids are at most 64 characters of `[A-Za-z0-9_-]` (see the catalog contract); other
/// segments cannot name a product, so nobody owns them.
pub fn is_catalog_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys() {
        for key in [
            "a",
            "products/01J/originals/01K",
            "products/p/thumbnails/i/w320.jpg",
            "with space/and.dots/..hidden/x..y",
            "ünïcödé/键",
            "trailing.",
        ] {
            assert_eq!(key_problem(key), None, "{key:?}");
        }
        assert_eq!(key_problem(&"k".repeat(1024)), None);
    }

    #[test]
    fn bad_keys() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "nul\0byte",
            "tab\there",
            "del\u{7f}",
            "back\\slash",
            "line\nfeed",
        ] {
            assert!(key_problem(key).is_some(), "{key:?}");
        }
        assert!(key_problem(&"k".repeat(1025)).is_some());
        // 1024 bytes is the limit, not 1024 characters.
        assert!(key_problem(&"é".repeat(513)).is_some());
    }

    #[test]
    fn key_prefixes() {
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert_eq!(key_prefix_problem("products/p/originals/", id), None);
        assert!(key_prefix_problem("products/p/originals", id).is_some());
        assert!(key_prefix_problem("", id).is_some());
        assert!(key_prefix_problem("/abs/", id).is_some());
        assert!(key_prefix_problem("a//", id).is_some());
        assert!(key_prefix_problem(&format!("{}/", "p".repeat(1000)), id).is_some());
    }

    #[test]
    fn list_prefixes() {
        assert_eq!(list_prefix_problem(""), None);
        assert_eq!(list_prefix_problem("products/p/orig"), None);
        assert!(list_prefix_problem("a\\b").is_some());
        assert!(list_prefix_problem("a\u{1}").is_some());
        assert!(list_prefix_problem(&"p".repeat(1025)).is_some());
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify("products/p1/originals/i1"),
            KeyClass::Original { product_id: "p1" }
        );
        assert_eq!(
            classify("products/p1/thumbnails/i1/w320.jpg"),
            KeyClass::Thumbnail { product_id: "p1" }
        );
        assert_eq!(classify("products/p1/originals"), KeyClass::OtherProduct);
        assert_eq!(classify("products/p1/other/x"), KeyClass::OtherProduct);
        assert_eq!(classify("products/p1"), KeyClass::OtherProduct);
        assert_eq!(classify("productsx/p1/originals/i"), KeyClass::Other);
        assert_eq!(classify("misc/file"), KeyClass::Other);
        assert!(classify("products/p/originals/i").is_image());
        assert!(!classify("misc/file").is_image());
    }

    #[test]
    fn products_of_keys() {
        assert_eq!(product_of("products/p1/originals/i"), Some("p1"));
        assert_eq!(product_of("products/p1/notes.txt"), Some("p1"));
        assert_eq!(product_of("products/p1"), None);
        assert_eq!(product_of("products//x"), None);
        assert_eq!(product_of("misc/p1/x"), None);
    }

    #[test]
    fn catalog_ids() {
        assert!(is_catalog_id("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(is_catalog_id("a_b-c"));
        assert!(!is_catalog_id(""));
        assert!(!is_catalog_id("a b"));
        assert!(!is_catalog_id("a.b"));
        assert!(!is_catalog_id(&"a".repeat(65)));
    }
}
