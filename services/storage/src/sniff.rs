//! Content types: syntax checks and magic-number sniffing (pure, no I/O).
//!
//! A four-entry table instead of a general sniffing crate: the check that matters (image
//! prefixes accept exactly JPEG, PNG, WebP and GIF) needs these signatures and no others, the
//! rules are exact and reviewable here, and they cannot drift with a dependency's update.
//! Outside image prefixes nothing else is sniffed: an unnamed type becomes
//! `application/octet-stream`, as the contract says.

/// Bytes needed to tell every supported signature apart (WebP's is the longest).
pub const SNIFF_BYTES: usize = 12;

/// Longest accepted content type, in characters.
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;

pub const OCTET_STREAM: &str = "application/octet-stream";

/// The image formats image prefixes accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageType {
    Jpeg,
    Png,
    WebP,
    Gif,
}

impl ImageType {
    pub fn content_type(self) -> &'static str {
        match self {
            ImageType::Jpeg => "image/jpeg",
            ImageType::Png => "image/png",
            ImageType::WebP => "image/webp",
            ImageType::Gif => "image/gif",
        }
    }

    /// The image type a declared content type names (case-insensitive, no aliases).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        [
            ImageType::Jpeg,
            ImageType::Png,
            ImageType::WebP,
            ImageType::Gif,
        ]
        .into_iter()
        .find(|image| image.content_type().eq_ignore_ascii_case(content_type))
    }
}

/// The image type whose signature `head` (the object's first bytes) starts with. Call it with at
/// least [`SNIFF_BYTES`] bytes, or with the whole object when it is shorter.
pub fn sniff(head: &[u8]) -> Option<ImageType> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageType::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageType::Png)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(ImageType::Gif)
    } else if head.len() >= 12 && head.starts_with(b"RIFF") && &head[8..12] == b"WEBP" {
        Some(ImageType::WebP)
    } else {
        None
    }
}

/// RFC 9110 `tchar`: the characters of a media type's type and subtype tokens.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Why `content_type` is not a `type/subtype` without parameters, if it is not. Empty is
/// allowed (it means "sniff").
pub fn content_type_problem(content_type: &str) -> Option<&'static str> {
    if content_type.is_empty() {
        return None;
    }
    if content_type.chars().count() > MAX_CONTENT_TYPE_CHARS {
        return Some("must be at most 255 characters");
    }
    let Some((kind, subtype)) = content_type.split_once('/') else {
        return Some("must be `type/subtype` without parameters, e.g. `image/jpeg`");
    };
    let token = |part: &str| !part.is_empty() && part.chars().all(is_token_char);
    if !token(kind) || !token(subtype) {
        return Some("must be `type/subtype` without parameters, e.g. `image/jpeg`");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]),
            Some(ImageType::Jpeg)
        );
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF]), Some(ImageType::Jpeg));
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(ImageType::Png)
        );
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(ImageType::Gif));
        assert_eq!(sniff(b"GIF87a"), Some(ImageType::Gif));
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Some(ImageType::WebP));
        // RIFF but not WebP (a WAV file), truncated signatures, and nothing at all.
        assert_eq!(sniff(b"RIFF\x24\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEB"), None);
        assert_eq!(sniff(&[0xFF, 0xD8]), None);
        assert_eq!(sniff(b"\x89PNG\r\n"), None);
        assert_eq!(sniff(b"GIF88a"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"%PDF-1.7"), None);
    }

    #[test]
    fn declared_types() {
        assert_eq!(
            ImageType::from_content_type("image/jpeg"),
            Some(ImageType::Jpeg)
        );
        assert_eq!(
            ImageType::from_content_type("IMAGE/PNG"),
            Some(ImageType::Png)
        );
        assert_eq!(ImageType::from_content_type("image/jpg"), None);
        assert_eq!(ImageType::from_content_type("image/svg+xml"), None);
    }

    #[test]
    fn content_type_syntax() {
        for good in ["", "image/jpeg", "application/vnd.api+json", "text/x-c++"] {
            assert_eq!(content_type_problem(good), None, "{good:?}");
        }
        for bad in [
            "image",
            "image/",
            "/jpeg",
            "text/plain; charset=utf-8",
            "image/jpeg ",
            "a/b/c",
            "ima ge/jpeg",
        ] {
            assert!(content_type_problem(bad).is_some(), "{bad:?}");
        }
        let long = format!("application/{}", "x".repeat(250));
        assert!(content_type_problem(&long).is_some());
    }
}
