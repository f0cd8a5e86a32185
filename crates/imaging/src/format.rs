//! The image formats the pipeline accepts, recognised by their magic bytes.

/// An image format the pipeline decodes (and, for JPEG and PNG, encodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl ImageFormat {
    /// Every format, for iteration in tests and content negotiation.
    pub const ALL: [ImageFormat; 4] = [Self::Jpeg, Self::Png, Self::Webp, Self::Gif];

    /// The IANA media type.
    pub fn mime(&self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
        }
    }

    /// The usual file extension, without the dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
        }
    }

    /// Parses a declared media type (`Content-Type`): case-insensitive, parameters ignored,
    /// and the common non-standard `image/jpg` accepted.
    pub fn from_mime(mime: &str) -> Option<Self> {
        let essence = mime.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(Self::Jpeg),
            "image/png" => Some(Self::Png),
            "image/webp" => Some(Self::Webp),
            "image/gif" => Some(Self::Gif),
            _ => None,
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.extension())
    }
}

// Hand-written rather than `image::guess_format` because callers also need to know whether a
// prefix that is too short could still become one of these signatures (see `could_become`).
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SIGNATURE: &[u8] = b"\xFF\xD8\xFF";

/// How many leading bytes `sniff` needs to decide (the RIFF/WEBP header).
pub const SNIFF_LEN: usize = 12;

/// Recognises the format from the file's first bytes (at least [`SNIFF_LEN`] for WebP).
pub fn sniff(prefix: &[u8]) -> Option<ImageFormat> {
    if prefix.starts_with(JPEG_SIGNATURE) {
        Some(ImageFormat::Jpeg)
    } else if prefix.starts_with(PNG_SIGNATURE) {
        Some(ImageFormat::Png)
    } else if prefix.starts_with(b"GIF87a") || prefix.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if prefix.len() >= SNIFF_LEN && &prefix[..4] == b"RIFF" && &prefix[8..12] == b"WEBP" {
        Some(ImageFormat::Webp)
    } else {
        None
    }
}

/// Whether a prefix too short for `sniff` could still be the start of a supported image.
pub(crate) fn could_become(prefix: &[u8]) -> bool {
    let is_start_of = |signature: &[u8]| {
        let n = prefix.len().min(signature.len());
        prefix[..n] == signature[..n]
    };
    let riff_webp =
        is_start_of(b"RIFF") && (prefix.len() <= 8 || b"WEBP".starts_with(&prefix[8..]));
    prefix.len() < SNIFF_LEN
        && (is_start_of(JPEG_SIGNATURE)
            || is_start_of(PNG_SIGNATURE)
            || is_start_of(b"GIF87a")
            || is_start_of(b"GIF89a")
            || riff_webp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_round_trips_and_tolerates_parameters() {
        for format in ImageFormat::ALL {
            assert_eq!(ImageFormat::from_mime(format.mime()), Some(format));
        }
        assert_eq!(
            ImageFormat::from_mime("IMAGE/JPEG; q=1"),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(ImageFormat::from_mime("image/jpg"), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::from_mime("image/svg+xml"), None);
        assert_eq!(ImageFormat::from_mime(""), None);
    }

    #[test]
    fn sniffs_each_signature() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(ImageFormat::Png));
        assert_eq!(sniff(b"GIF89a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"GIF87a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"<svg xmlns"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn short_prefixes_that_may_still_match() {
        assert!(could_become(b""));
        assert!(could_become(b"\xFF"));
        assert!(could_become(b"\x89PN"));
        assert!(could_become(b"RIFF\0\0\0\0WE"));
        assert!(!could_become(b"RIFF\0\0\0\0WA"));
        assert!(!could_become(b"<s"));
        assert!(!could_become(b"GIF88"));
    }
}
