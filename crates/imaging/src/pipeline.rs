//! The thumbnail pipeline: limits → shrink-on-load decode → resize largest → orient → resize
//! the smaller sizes from the largest → encode.

use fast_image_resize as fr;
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageEncoder};

use crate::{ImageFormat, ImagingError, Limits, decode, probe};

/// Which variants to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailSpec {
    /// Bounds on the longest side, one variant each (named `w{N}`); never upscaled.
    pub sizes: Vec<u32>,
    /// JPEG quality, 1..=100.
    pub jpeg_quality: u8,
}

impl ThumbnailSpec {
    pub const DEFAULT_SIZES: [u32; 3] = [160, 320, 640];
    pub const DEFAULT_JPEG_QUALITY: u8 = 80;
    /// Largest accepted size: far beyond thumbnails, and within what the encoders take.
    pub const MAX_SIZE: u32 = 8192;

    /// Parses a comma-separated list of sizes such as `"160,320,640"` (a Spin variable),
    /// validated as [`ThumbnailSpec::validate`] does.
    pub fn parse_sizes(list: &str) -> Result<Vec<u32>, ImagingError> {
        let sizes = list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<u32>().map_err(|_| {
                    ImagingError::InvalidSpec(format!("size {item:?} is not a whole number"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self {
            sizes: sizes.clone(),
            ..Self::default()
        }
        .validate()?;
        Ok(sizes)
    }

    /// At least one size, each in `1..=MAX_SIZE`, no duplicates (names must be unique); a
    /// quality in `1..=100`.
    pub fn validate(&self) -> Result<(), ImagingError> {
        if self.sizes.is_empty() {
            return Err(ImagingError::InvalidSpec("no thumbnail sizes".into()));
        }
        for (index, &size) in self.sizes.iter().enumerate() {
            if size == 0 || size > Self::MAX_SIZE {
                return Err(ImagingError::InvalidSpec(format!(
                    "size {size} is outside 1..={}",
                    Self::MAX_SIZE
                )));
            }
            if self.sizes[..index].contains(&size) {
                return Err(ImagingError::InvalidSpec(format!(
                    "size {size} is listed twice"
                )));
            }
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(ImagingError::InvalidSpec(format!(
                "JPEG quality {} is outside 1..=100",
                self.jpeg_quality
            )));
        }
        Ok(())
    }
}

impl Default for ThumbnailSpec {
    fn default() -> Self {
        Self {
            sizes: Self::DEFAULT_SIZES.to_vec(),
            jpeg_quality: Self::DEFAULT_JPEG_QUALITY,
        }
    }
}

/// One encoded variant.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// `w{N}` for the configured size N.
    pub name: String,
    /// The configured size this variant is for.
    pub size: u32,
    pub width: u32,
    pub height: u32,
    /// JPEG for opaque images, PNG for images with transparency.
    pub format: ImageFormat,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thumbnail")
            .field("name", &self.name)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// The dimensions of the variant for `size`, for an image of `width`x`height` as displayed
/// (after orientation): the longest side becomes `size`, the other keeps the aspect ratio
/// (rounded, at least 1); never larger than the image.
pub fn target_dimensions(width: u32, height: u32, size: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= size {
        return (width, height);
    }
    let scale = |side: u32| -> u32 {
        let scaled =
            (u64::from(side) * u64::from(size) + u64::from(longest) / 2) / u64::from(longest);
        u32::try_from(scaled.max(1)).unwrap_or(size)
    };
    if width >= height {
        (size, scale(height))
    } else {
        (scale(width), size)
    }
}

/// Makes one variant per configured size (see the crate docs for the rules).
pub fn make_thumbnails(
    input: &[u8],
    spec: &ThumbnailSpec,
    limits: &Limits,
) -> Result<Vec<Thumbnail>, ImagingError> {
    spec.validate()?;
    limits.check_input_bytes(input.len() as u64)?;
    if input.is_empty() {
        return Err(ImagingError::Corrupt("the input is empty".into()));
    }
    let header = match probe(input) {
        Err(ImagingError::NeedMoreData) => {
            return Err(ImagingError::Truncated(
                "the file ends inside the image header".into(),
            ));
        }
        other => other?,
    };
    limits.check_pixels(header.width, header.height)?;
    // Animations: refuse a frame bomb from the structure alone; the decoder reads only the
    // first frame.
    limits.check_frames(input, header.format)?;

    let largest_size = spec.sizes.iter().copied().max().unwrap_or(1);
    // The header's stored dimensions; the orientation is only known after decoding, so ask the
    // decoder for enough pixels whichever way the image turns out to be displayed.
    let shrink_to = target_dimensions(header.width, header.height, largest_size);
    let decoded = decode::decode(input, header.format, shrink_to, limits)?;
    // Variant sizes come from the header's dimensions when the decoder shrank the image (JPEG),
    // so the aspect ratio is exact whatever scale it picked; otherwise from the pixels.
    let (full_width, full_height) = if header.format == ImageFormat::Jpeg {
        (header.width, header.height)
    } else {
        (decoded.image.width(), decoded.image.height())
    };
    let swaps = swaps_axes(decoded.orientation);
    let (display_width, display_height) = if swaps {
        (full_height, full_width)
    } else {
        (full_width, full_height)
    };

    // Resize to the largest variant in stored orientation, then orient the small result.
    let (largest_w, largest_h) = target_dimensions(display_width, display_height, largest_size);
    let (stored_w, stored_h) = if swaps {
        (largest_h, largest_w)
    } else {
        (largest_w, largest_h)
    };
    let mut largest = resize(&decoded.image, stored_w, stored_h)?;
    drop(decoded.image);
    largest.apply_orientation(decoded.orientation);

    // Transparency decides the encoding; an alpha channel that is fully opaque does not count.
    let largest = match largest {
        DynamicImage::ImageRgba8(rgba) if rgba.pixels().all(|p| p.0[3] == u8::MAX) => {
            DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).to_rgb8())
        }
        other => other,
    };
    let output_format = if largest.color().has_alpha() {
        ImageFormat::Png
    } else {
        ImageFormat::Jpeg
    };

    spec.sizes
        .iter()
        .map(|&size| {
            let (width, height) = target_dimensions(display_width, display_height, size);
            let bytes = if (width, height) == (largest.width(), largest.height()) {
                encode(&largest, output_format, spec.jpeg_quality)?
            } else {
                encode(
                    &resize(&largest, width, height)?,
                    output_format,
                    spec.jpeg_quality,
                )?
            };
            Ok(Thumbnail {
                name: format!("w{size}"),
                size,
                width,
                height,
                format: output_format,
                bytes,
            })
        })
        .collect()
}

fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

fn pixel_type(image: &DynamicImage) -> Result<fr::PixelType, ImagingError> {
    match image {
        DynamicImage::ImageLuma8(_) => Ok(fr::PixelType::U8),
        DynamicImage::ImageRgb8(_) => Ok(fr::PixelType::U8x3),
        DynamicImage::ImageRgba8(_) => Ok(fr::PixelType::U8x4),
        other => Err(ImagingError::Unsupported(format!(
            "pixel layout {:?}",
            other.color()
        ))),
    }
}

/// Lanczos3 convolution (what libvips' thumbnail uses after shrink-on-load); alpha is
/// premultiplied during the resize so transparent pixels do not bleed their colour.
fn resize(image: &DynamicImage, width: u32, height: u32) -> Result<DynamicImage, ImagingError> {
    if (image.width(), image.height()) == (width, height) {
        return Ok(image.clone());
    }
    let pixel_type = pixel_type(image)?;
    let internal = |e: &dyn std::fmt::Display| ImagingError::Encode(format!("resize: {e}"));
    let source =
        fr::images::ImageRef::new(image.width(), image.height(), image.as_bytes(), pixel_type)
            .map_err(|e| internal(&e))?;
    let mut target = fr::images::Image::new(width, height, pixel_type);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
    fr::Resizer::new()
        .resize(&source, &mut target, &options)
        .map_err(|e| internal(&e))?;
    let pixels = target.into_vec();
    let rebuilt = match pixel_type {
        fr::PixelType::U8 => {
            ImageBuffer::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
        }
        fr::PixelType::U8x3 => {
            ImageBuffer::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
        }
        _ => ImageBuffer::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8),
    };
    rebuilt.ok_or_else(|| internal(&"resizer returned a short buffer"))
}

fn encode(image: &DynamicImage, format: ImageFormat, quality: u8) -> Result<Vec<u8>, ImagingError> {
    let (width, height) = (image.width(), image.height());
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            let color = match image {
                DynamicImage::ImageLuma8(_) => jpeg_encoder::ColorType::Luma,
                DynamicImage::ImageRgb8(_) => jpeg_encoder::ColorType::Rgb,
                _ => return Err(ImagingError::Encode("JPEG takes L or RGB pixels".into())),
            };
            let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
                return Err(ImagingError::Encode("too large for JPEG".into()));
            };
            jpeg_encoder::Encoder::new(&mut out, quality)
                .encode(image.as_bytes(), w, h, color)
                .map_err(|e| ImagingError::Encode(e.to_string()))?;
        }
        ImageFormat::Png => {
            image::codecs::png::PngEncoder::new_with_quality(
                &mut out,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Adaptive,
            )
            .write_image(image.as_bytes(), width, height, image.color().into())
            .map_err(|e| ImagingError::Encode(e.to_string()))?;
        }
        ImageFormat::Webp | ImageFormat::Gif => {
            return Err(ImagingError::Encode(format!(
                "{format} output is not offered"
            )));
        }
    }
    Ok(out)
}
