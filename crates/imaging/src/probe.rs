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
}

impl Probe {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
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
    })
}
