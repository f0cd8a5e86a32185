//! Header-only probing: format and dimensions from a prefix of the file.

use crate::format::{self, ImageFormat};
use crate::{ImagingError, sniff};

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: ImageFormat,
    /// Stored width (before any EXIF orientation is applied).
    pub width: u32,
    /// Stored height (before any EXIF orientation is applied).
    pub height: u32,
    /// The EXIF orientation (1 to 8) found before the dimensions: a JPEG's APP1 `Exif`
    /// segment or a PNG's `eXIf` chunk; 1 (as stored) when there is none. WebP keeps EXIF after
    /// the image data and GIF has none, so both read 1 here.
    pub orientation: u8,
}

impl Probe {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The dimensions as the image is displayed: orientations 5 to 8 turn it by 90°, as the
    /// thumbnails are made.
    pub fn displayed(&self) -> (u32, u32) {
        if (5..=8).contains(&self.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

/// The EXIF orientation in the metadata before the image data, 1 when absent or unreadable.
fn orientation(format: ImageFormat, prefix: &[u8]) -> u8 {
    let exif = match format {
        ImageFormat::Jpeg => jpeg_exif(prefix),
        ImageFormat::Png => png_exif(prefix),
        _ => None,
    };
    exif.and_then(image::metadata::Orientation::from_exif_chunk)
        .map_or(1, image::metadata::Orientation::to_exif)
}

/// The TIFF payload of the first APP1 `Exif\0\0` segment before the frame header.
fn jpeg_exif(prefix: &[u8]) -> Option<&[u8]> {
    let mut at = 2; // after SOI
    loop {
        let marker = *prefix.get(at + 1)?;
        if *prefix.get(at)? != 0xFF {
            return None;
        }
        // Start of frame/scan: metadata segments come before these.
        if matches!(marker, 0xC0..=0xCF | 0xDA) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            return None;
        }
        let length = usize::from(u16::from_be_bytes([
            *prefix.get(at + 2)?,
            *prefix.get(at + 3)?,
        ]));
        let body = prefix.get(at + 4..at + 2 + length)?;
        if marker == 0xE1
            && let Some(tiff) = body.strip_prefix(b"Exif\0\0")
        {
            return Some(tiff);
        }
        at += 2 + length;
    }
}

/// The payload of a PNG `eXIf` chunk before the first `IDAT`.
fn png_exif(prefix: &[u8]) -> Option<&[u8]> {
    let mut at = 8; // after the signature
    loop {
        let length =
            usize::try_from(u32::from_be_bytes(prefix.get(at..at + 4)?.try_into().ok()?)).ok()?;
        let kind = prefix.get(at + 4..at + 8)?;
        match kind {
            b"eXIf" => return prefix.get(at + 8..at + 8 + length),
            b"IDAT" | b"IEND" => return None,
            _ => at = at.checked_add(12)?.checked_add(length)?,
        }
    }
}

/// Header-only: reads dimensions from a prefix of the file without decoding pixels.
///
/// `Err(ImagingError::NeedMoreData)` when the prefix is too short to tell (the caller reads
/// more, up to a cap: a JPEG's dimensions come after its metadata segments, up to a few
/// hundred KiB in). Other errors are permanent.
pub fn probe(prefix: &[u8]) -> Result<Probe, ImagingError> {
    let Some(format) = sniff(prefix) else {
        if format::could_become(prefix) {
            return Err(ImagingError::NeedMoreData);
        }
        return Err(ImagingError::Unsupported(
            "not a JPEG, PNG, WebP or GIF image".into(),
        ));
    };
    // `imagesize` walks the headers (JPEG segments up to the SOF marker, the PNG IHDR, the GIF
    // screen descriptor, the WebP VP8/VP8L/VP8X chunk) without touching pixel data.
    let size = match imagesize::blob_size(prefix) {
        Ok(size) => size,
        Err(imagesize::ImageError::IoError(error))
            if error.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return Err(ImagingError::NeedMoreData);
        }
        Err(imagesize::ImageError::IoError(error)) => {
            return Err(ImagingError::Corrupt(format!("{format} header: {error}")));
        }
        Err(imagesize::ImageError::CorruptedImage) => {
            return Err(ImagingError::Corrupt(format!("{format} header is invalid")));
        }
        Err(imagesize::ImageError::NotSupported) => {
            return Err(ImagingError::Unsupported(format!(
                "{format} variant not supported"
            )));
        }
    };
    let (Ok(width), Ok(height)) = (u32::try_from(size.width), u32::try_from(size.height)) else {
        return Err(ImagingError::Corrupt(format!(
            "{format} header declares impossible dimensions"
        )));
    };
    if width == 0 || height == 0 {
        return Err(ImagingError::Corrupt(format!(
            "{format} header declares an empty image ({width}x{height})"
        )));
    }
    Ok(Probe {
        format,
        width,
        height,
        orientation: orientation(format, prefix),
    })
}
