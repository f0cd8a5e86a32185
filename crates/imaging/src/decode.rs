//! Decoding to 8-bit L, RGB or RGBA pixels, with allocation limits and (JPEG) shrink-on-load.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder};

use crate::{ImageFormat, ImagingError, Limits};

/// A decoded image in its stored orientation, possibly already shrunk by the decoder.
pub(crate) struct Decoded {
    /// `ImageLuma8`, `ImageRgb8` or `ImageRgba8`.
    pub image: DynamicImage,
    /// The EXIF (or format) orientation still to apply.
    pub orientation: Orientation,
}

/// Decodes `input`, whose header said `width`x`height` (already checked against the pixel
/// limit). `shrink_to` is the smallest size, in stored orientation, the result may have: JPEG
/// decoding picks the smallest DCT scale (1/8, 1/4, 1/2, 1) that still covers it.
pub(crate) fn decode(
    input: &[u8],
    format: ImageFormat,
    shrink_to: (u32, u32),
    limits: &Limits,
) -> Result<Decoded, ImagingError> {
    match format {
        ImageFormat::Jpeg => decode_jpeg(input, shrink_to, limits),
        ImageFormat::Png | ImageFormat::Webp | ImageFormat::Gif => {
            decode_with_image(input, format, limits)
        }
    }
}

fn jpeg_error(error: jpeg_decoder::Error) -> ImagingError {
    match error {
        jpeg_decoder::Error::Io(e) => ImagingError::from_io(&e),
        jpeg_decoder::Error::Unsupported(feature) => {
            ImagingError::Unsupported(format!("JPEG feature {feature:?}"))
        }
        other => ImagingError::Corrupt(other.to_string()),
    }
}

// `jpeg-decoder` rather than the `image` crate's JPEG decoder (zune-jpeg): it is the one that
// implements DCT-domain downscaling (`Decoder::scale`), which skips most of the IDCT and colour
// conversion work for thumbnails. On wasm32 it never starts threads.
fn decode_jpeg(
    input: &[u8],
    shrink_to: (u32, u32),
    limits: &Limits,
) -> Result<Decoded, ImagingError> {
    let max_alloc = limits.max_alloc_bytes;
    let mut decoder = jpeg_decoder::Decoder::new(input);
    decoder.set_max_decoding_buffer_size(usize::try_from(max_alloc).unwrap_or(usize::MAX));
    decoder.read_info().map_err(jpeg_error)?;
    let Some(info) = decoder.info() else {
        return Err(ImagingError::Corrupt("JPEG without a frame header".into()));
    };
    let components: u64 = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::L16 => 2,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::CMYK32 => 4,
    };
    let full_pixels = u64::from(info.width) * u64::from(info.height);
    // A progressive JPEG keeps every DCT coefficient (2 bytes per sample) of the full-size image
    // until its last scan, whatever the output scale; the decoder does not limit that buffer, so
    // bound it here, from the header, before any of it is allocated.
    if info.coding_process == jpeg_decoder::CodingProcess::DctProgressive
        && full_pixels * components * 2 > max_alloc
    {
        return Err(ImagingError::MemoryLimit { max: max_alloc });
    }
    let clamp = |v: u32| u16::try_from(v.max(1)).unwrap_or(u16::MAX);
    decoder
        .scale(clamp(shrink_to.0), clamp(shrink_to.1))
        .map_err(jpeg_error)?;
    let pixels = decoder.decode().map_err(jpeg_error)?;
    let Some(info) = decoder.info() else {
        return Err(ImagingError::Corrupt("JPEG without a frame header".into()));
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let image = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            ImageBuffer::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::L16 => {
            // 16-bit lossless JPEG, big-endian samples: keep the high byte.
            let high_bytes = pixels.chunks_exact(2).map(|sample| sample[0]).collect();
            ImageBuffer::from_raw(width, height, high_bytes).map(DynamicImage::ImageLuma8)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            ImageBuffer::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::CMYK32 => {
            ImageBuffer::from_raw(width, height, cmyk_to_rgb(&pixels)).map(DynamicImage::ImageRgb8)
        }
    };
    let Some(image) = image else {
        return Err(ImagingError::Corrupt(
            "JPEG decoder returned fewer pixels than its frame declares".into(),
        ));
    };
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(Decoded { image, orientation })
}

/// CMYK as Adobe writes it in JPEG (inverted: 255 means no ink) to RGB, the naive way; such
/// files are rare for product photos and carry no ICC handling here.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for pixel in cmyk.chunks_exact(4) {
        let k = u16::from(pixel[3]);
        for &ink in &pixel[..3] {
            rgb.push(((u16::from(ink) * k) / 255) as u8);
        }
    }
    rgb
}

fn decode_with_image(
    input: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<Decoded, ImagingError> {
    let max_alloc = limits.max_alloc_bytes;
    let image_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
    };
    let mut reader = image::ImageReader::with_format(Cursor::new(input), image_format);
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(max_alloc);
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| ImagingError::from_image(e, max_alloc))?;
    let (width, height) = decoder.dimensions();
    // The decoder's own header parse is authoritative (the prefix probe is a first check).
    limits.check_pixels(width, height)?;
    // `image` enforces `max_alloc` in `ImageReader::decode`, not in `DynamicImage::from_decoder`
    // (needed here for the orientation), so reserve the pixel buffer, plus the 8-bit copy when
    // the layout needs converting, against the limit here.
    let color = decoder.color_type();
    let conversion = match color {
        image::ColorType::L8 | image::ColorType::Rgb8 | image::ColorType::Rgba8 => 0,
        _ => u64::from(width) * u64::from(height) * 4,
    };
    if decoder.total_bytes().saturating_add(conversion) > max_alloc {
        return Err(ImagingError::MemoryLimit { max: max_alloc });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // For an animated GIF or WebP this reads the first frame only (the decoders' `read_image`
    // composes frame one onto the logical screen / canvas and stops; the frame count was
    // checked before), into a buffer of the screen's size reserved above.
    let image =
        DynamicImage::from_decoder(decoder).map_err(|e| ImagingError::from_image(e, max_alloc))?;
    let image = match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => {
            image
        }
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    Ok(Decoded { image, orientation })
}
