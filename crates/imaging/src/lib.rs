//! Storemesh's thumbnail pipeline as a plain library, compiled natively (unit tests,
//! benchmarks) and for `wasm32-wasip2` (the `thumbnail` and `upload-hook` Spin components).
//! Single-threaded everywhere: no rayon, no threads in wasm.
//!
//! - [`sniff`] and [`probe`] read only a prefix of the file: the format from its magic bytes,
//!   the dimensions from its header, so an upload can be refused before it is stored.
//! - [`make_thumbnails`] checks the byte and pixel limits from the header and the frame limit
//!   from the container's structure ([`frame_count`]) *before* decoding,
//!   decodes with allocation limits (JPEG with DCT-domain shrink-on-load to the smallest scale
//!   that still covers the largest size, as libvips does), applies the EXIF orientation,
//!   resizes with SIMD (`fast_image_resize`, `simd128` in wasm when the build enables it) to the
//!   largest size and from that one to the smaller sizes, and encodes JPEG for opaque images and
//!   PNG for images with transparency.
//!
//! Animated GIF and WebP: thumbnails are made from the **first frame only**, and only that
//! frame is decoded (a GIF's first frame onto its logical screen, whose size is what the pixel
//! and allocation limits check; a WebP's first `ANMF` frame onto its canvas). An animation of
//! more than [`Limits::max_frames`] frames (default 1000) is refused with
//! [`ImagingError::TooManyFrames`] before decoding; counting stops just past the limit, so a
//! frame bomb costs a walk over at most `max_frames + 1` frame headers.
//!
//! Sizes bound the longest side and never upscale: an image smaller than a configured size
//! still gets a variant for that size, at its own dimensions, so that every configured size has
//! exactly one variant (the catalog's READY rule counts one per configured size).

mod decode;
mod error;
mod format;
mod frames;
mod pipeline;
mod probe;

pub use error::ImagingError;
pub use format::{ImageFormat, SNIFF_LEN, sniff};
pub use frames::frame_count;
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
    /// Most frames an animated GIF or WebP may have (default 1000; at least 1 for any image to
    /// pass). Only the first frame is ever decoded; the frames are counted from the file's
    /// block/chunk structure without decompressing them, and counting stops at `max_frames + 1`.
    pub max_frames: u32,
}

impl Limits {
    pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;
    pub const DEFAULT_MAX_INPUT_BYTES: u64 = 50 * 1024 * 1024;
    pub const DEFAULT_MAX_ALLOC_BYTES: u64 = 160 * 1024 * 1024;
    pub const DEFAULT_MAX_FRAMES: u32 = 1000;

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

    /// The frame limit applied to an encoded image of `format` (see [`frame_count`]): its
    /// frame count, or [`ImagingError::TooManyFrames`] (or a truncated/corrupt structure).
    pub fn check_frames(&self, input: &[u8], format: ImageFormat) -> Result<u32, ImagingError> {
        let frames = frame_count(input, format, self.max_frames)?;
        if frames > self.max_frames {
            return Err(ImagingError::TooManyFrames {
                frames_at_least: frames,
                limit: self.max_frames,
            });
        }
        Ok(frames)
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
            max_frames: Self::DEFAULT_MAX_FRAMES,
        }
    }
}

/// The SIMD instruction set the resizer uses on this build and CPU (`Avx2`, `Sse4_1`, `Neon`,
/// `Simd128` for wasm built with `+simd128`, or `None`), for logs and benchmark reports.
pub fn resize_simd() -> String {
    format!("{:?}", fast_image_resize::Resizer::new().cpu_extensions())
}
