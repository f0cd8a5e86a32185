//! Storemesh's thumbnail pipeline as a plain library, compiled natively (unit tests,
//! benchmarks) and for `wasm32-wasip2` (the `thumbnail` and `upload-hook` Spin components).
//! Single-threaded everywhere: no rayon, no threads in wasm.
//!
//! - [`sniff`] and [`probe`] read only a prefix of the file: the format from its magic bytes,
//!   the dimensions from its header, so an upload can be refused before it is stored.
//! - [`make_thumbnails`] checks the byte and pixel limits from the header *before* decoding,
//!   decodes with allocation limits (JPEG with DCT-domain shrink-on-load to the smallest scale
//!   that still covers the largest size, as libvips does), applies the EXIF orientation,
//!   resizes with SIMD (`fast_image_resize`, `simd128` in wasm when the build enables it) to the
//!   largest size and from that one to the smaller sizes, and encodes JPEG for opaque images and
//!   PNG for images with transparency.
//!
//! Sizes bound the longest side and never upscale: an image smaller than a configured size
//! still gets a variant for that size, at its own dimensions, so that every configured size has
//! exactly one variant (the catalog's READY rule counts one per configured size).

mod decode;
mod error;
mod format;
mod pipeline;
mod probe;

pub use error::ImagingError;
pub use format::{ImageFormat, SNIFF_LEN, sniff};
pub use pipeline::{Thumbnail, ThumbnailSpec, make_thumbnails, target_dimensions};
pub use probe::{Probe, probe};

/// Resource limits, all checked before the memory is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted `width * height` of the original (default 50 MP).
    pub max_pixels: u64,
    /// Largest accepted encoded input (default 50 MiB).
    pub max_input_bytes: u64,
    /// Largest allocation a decoder may make for pixels or coefficients (default 160 MiB:
    /// room for a 40 MP RGBA PNG, and below the edge runtime's 256 MiB per instance once the
    /// input and the variants are counted).
    pub max_alloc_bytes: u64,
}

impl Limits {
    pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;
    pub const DEFAULT_MAX_INPUT_BYTES: u64 = 50 * 1024 * 1024;
    pub const DEFAULT_MAX_ALLOC_BYTES: u64 = 160 * 1024 * 1024;

    /// The pixel limit applied to header dimensions.
    pub fn check_pixels(&self, width: u32, height: u32) -> Result<(), ImagingError> {
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(ImagingError::TooManyPixels {
                width,
                height,
                max: self.max_pixels,
            });
        }
        Ok(())
    }

    /// The byte limit applied to the encoded input (or a declared content length).
    pub fn check_input_bytes(&self, bytes: u64) -> Result<(), ImagingError> {
        if bytes > self.max_input_bytes {
            return Err(ImagingError::TooLarge {
                bytes,
                max: self.max_input_bytes,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_input_bytes: Self::DEFAULT_MAX_INPUT_BYTES,
            max_alloc_bytes: Self::DEFAULT_MAX_ALLOC_BYTES,
        }
    }
}
