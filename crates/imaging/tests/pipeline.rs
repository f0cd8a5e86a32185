//! The thumbnail pipeline on real encoded files of every format, made here with real encoders,
//! and on hostile input.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use storemesh_imaging::{
    ImageFormat, ImagingError, Limits, ThumbnailSpec, frame_count, make_thumbnails, probe, sniff,
};

// ---------------------------------------------------------------- input makers

/// Photographic-ish content: gradients plus a deterministic texture, so JPEG has work to do.
fn photo(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 13) as u8 & 0x1f;
        Rgb([
            ((x * 255 / width.max(1)) as u8).saturating_add(noise),
            ((y * 255 / height.max(1)) as u8).saturating_add(noise / 2),
            (((x + y) * 127 / (width + height).max(1)) as u8).saturating_add(noise),
        ])
    })
}

/// Left half red, right half blue: shows where the image's left side ends up.
fn halves(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            Rgb([220, 20, 20])
        } else {
            Rgb([20, 20, 220])
        }
    })
}

fn jpeg(image: &RgbImage, quality: u8, exif: Option<&[u8]>, progressive: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_progressive(progressive);
    if let Some(exif) = exif {
        encoder.add_app_segment(1, exif).unwrap();
    }
    encoder
        .encode(
            image.as_raw(),
            image.width() as u16,
            image.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    out
}

/// An APP1 payload: `Exif\0\0` + a little-endian TIFF header with one IFD entry,
/// Orientation (0x0112, SHORT, count 1) = `orientation`.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(b"II*\0");
    app1.extend_from_slice(&8u32.to_le_bytes()); // offset of IFD0
    app1.extend_from_slice(&1u16.to_le_bytes()); // one entry
    app1.extend_from_slice(&0x0112u16.to_le_bytes());
    app1.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    app1.extend_from_slice(&1u32.to_le_bytes());
    app1.extend_from_slice(&orientation.to_le_bytes());
    app1.extend_from_slice(&[0, 0]);
    app1.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    app1
}

fn png_rgb(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn png_rgba(image: &RgbaImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    out
}

fn webp(image: &RgbaImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    out
}

/// An animated GIF whose frames are solid `colors`.
fn gif(width: u16, height: u16, colors: &[[u8; 3]]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &[]).unwrap();
        for color in colors {
            let pixels: Vec<u8> =
                std::iter::repeat_n(color, usize::from(width) * usize::from(height))
                    .flatten()
                    .copied()
                    .collect();
            let frame = gif::Frame::from_rgb(width, height, &pixels);
            encoder.write_frame(&frame).unwrap();
        }
    }
    out
}

/// A PNG whose IHDR declares `width`x`height` 8-bit greyscale and whose IDAT holds the first
/// `rows` rows of zeros: a decompression bomb's header with KBs of data.
fn png_declaring(width: u32, height: u32, rows: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&crc.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit greyscale, deflate, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    let raw = vec![0u8; (width as usize + 1) * rows as usize];
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9);
    chunk(&mut out, b"IDAT", &compressed);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn decode_jpeg(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let pixels = decoder.decode().unwrap();
    let info = decoder.info().unwrap();
    assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
    (u32::from(info.width), u32::from(info.height), pixels)
}

fn thumbnails(input: &[u8]) -> Vec<storemesh_imaging::Thumbnail> {
    make_thumbnails(input, &ThumbnailSpec::default(), &Limits::default()).unwrap()
}

fn sizes(thumbs: &[storemesh_imaging::Thumbnail]) -> Vec<(&str, u32, u32)> {
    thumbs
        .iter()
        .map(|t| (t.name.as_str(), t.width, t.height))
        .collect()
}

// ---------------------------------------------------------------- every format

#[test]
fn jpeg_makes_the_three_sizes_with_exact_aspect() {
    let input = jpeg(&photo(1200, 900), 90, None, false);
    let thumbs = thumbnails(&input);
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 120), ("w320", 320, 240), ("w640", 640, 480)]
    );
    for thumb in &thumbs {
        assert_eq!(thumb.format, ImageFormat::Jpeg);
        assert_eq!(sniff(&thumb.bytes), Some(ImageFormat::Jpeg));
        let (w, h, _) = decode_jpeg(&thumb.bytes);
        assert_eq!((w, h), (thumb.width, thumb.height));
    }
}

#[test]
fn twelve_megapixel_jpeg_shrinks_on_load() {
    let input = jpeg(&photo(4000, 3000), 90, None, false);
    let thumbs = thumbnails(&input);
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 120), ("w320", 320, 240), ("w640", 640, 480)]
    );
}

#[test]
fn shrink_on_load_decodes_under_an_allocation_limit_below_the_full_image() {
    // Fully decoded, 2000x2000 RGB needs 12 MB; at 1/2 scale (the smallest covering 640) 3 MB.
    let input = jpeg(&photo(2000, 2000), 85, None, false);
    let limits = Limits {
        max_alloc_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    };
    let thumbs = make_thumbnails(&input, &ThumbnailSpec::default(), &limits).unwrap();
    assert_eq!(thumbs[2].width, 640);
}

#[test]
fn progressive_jpeg_over_the_allocation_limit_is_refused_before_decoding() {
    let input = jpeg(&photo(2000, 2000), 85, None, true);
    let limits = Limits {
        max_alloc_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    };
    let error = make_thumbnails(&input, &ThumbnailSpec::default(), &limits).unwrap_err();
    assert_eq!(
        error,
        ImagingError::MemoryLimit {
            max: 4 * 1024 * 1024
        }
    );
    // Within the default limits the same file decodes.
    assert_eq!(sizes(&thumbnails(&input))[2], ("w640", 640, 640));
}

#[test]
fn greyscale_jpeg_stays_a_jpeg() {
    let grey = image::GrayImage::from_fn(800, 600, |x, y| image::Luma([((x + y) % 256) as u8]));
    let mut input = Vec::new();
    jpeg_encoder::Encoder::new(&mut input, 90)
        .encode(grey.as_raw(), 800, 600, jpeg_encoder::ColorType::Luma)
        .unwrap();
    let thumbs = thumbnails(&input);
    assert_eq!(sizes(&thumbs)[2], ("w640", 640, 480));
    assert!(thumbs.iter().all(|t| t.format == ImageFormat::Jpeg));
}

#[test]
fn opaque_png_becomes_jpeg() {
    let thumbs = thumbnails(&png_rgb(&photo(900, 1200)));
    assert_eq!(
        sizes(&thumbs),
        [("w160", 120, 160), ("w320", 240, 320), ("w640", 480, 640)]
    );
    assert!(thumbs.iter().all(|t| t.format == ImageFormat::Jpeg));
}

#[test]
fn png_with_an_opaque_alpha_channel_becomes_jpeg() {
    let rgba = RgbaImage::from_fn(700, 700, |x, y| Rgba([x as u8, y as u8, 9, 255]));
    let thumbs = thumbnails(&png_rgba(&rgba));
    assert!(thumbs.iter().all(|t| t.format == ImageFormat::Jpeg));
}

#[test]
fn transparent_png_becomes_png_and_keeps_its_transparency() {
    // Opaque red disc on a fully transparent background.
    let rgba = RgbaImage::from_fn(1000, 800, |x, y| {
        let (dx, dy) = (x as i64 - 500, y as i64 - 400);
        if dx * dx + dy * dy < 300 * 300 {
            Rgba([230, 10, 10, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    });
    let thumbs = thumbnails(&png_rgba(&rgba));
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 128), ("w320", 320, 256), ("w640", 640, 512)]
    );
    for thumb in &thumbs {
        assert_eq!(thumb.format, ImageFormat::Png);
        let decoded = image::load_from_memory_with_format(&thumb.bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgba8();
        assert_eq!(decoded.dimensions(), (thumb.width, thumb.height));
        assert_eq!(decoded.get_pixel(0, 0).0[3], 0, "corner stays transparent");
        let centre = decoded.get_pixel(thumb.width / 2, thumb.height / 2).0;
        assert_eq!(centre[3], 255);
        assert!(
            centre[0] > 200 && centre[1] < 40,
            "centre stays red: {centre:?}"
        );
    }
}

#[test]
fn webp_is_decoded() {
    let rgba = RgbaImage::from_fn(960, 540, |x, y| Rgba([x as u8, y as u8, 100, 255]));
    let thumbs = thumbnails(&webp(&rgba));
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 90), ("w320", 320, 180), ("w640", 640, 360)]
    );
    assert!(thumbs.iter().all(|t| t.format == ImageFormat::Jpeg));
}

#[test]
fn animated_gif_uses_its_first_frame() {
    let input = gif(800, 400, &[[10, 200, 10], [200, 10, 200]]);
    let thumbs = thumbnails(&input);
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 80), ("w320", 320, 160), ("w640", 640, 320)]
    );
    let (_, _, pixels) = decode_jpeg(&thumbs[0].bytes);
    let [r, g, b] = [pixels[0], pixels[1], pixels[2]];
    assert!(
        g > 150 && r < 60 && b < 60,
        "first frame is green: {r},{g},{b}"
    );
}

// ---------------------------------------------------------------- animations

const RED: [u8; 3] = [220, 20, 20];
const GREEN: [u8; 3] = [20, 200, 20];
const BLUE: [u8; 3] = [20, 20, 220];

/// The average colour of a JPEG thumbnail.
fn average_colour(jpeg: &[u8]) -> [u32; 3] {
    let (width, height, pixels) = decode_jpeg(jpeg);
    let count = u64::from(width) * u64::from(height);
    let mut sums = [0u64; 3];
    for pixel in pixels.chunks_exact(3) {
        for (sum, &value) in sums.iter_mut().zip(pixel) {
            *sum += u64::from(value);
        }
    }
    sums.map(|sum| (sum / count) as u32)
}

fn assert_colour(thumbs: &[storemesh_imaging::Thumbnail], expected: [u8; 3]) {
    for thumb in thumbs {
        let average = average_colour(&thumb.bytes);
        for (got, want) in average.iter().zip(expected) {
            assert!(
                got.abs_diff(u32::from(want)) <= 12,
                "{}: average {average:?}, expected {expected:?}",
                thumb.name
            );
        }
    }
}

/// A RIFF chunk, padded to an even length.
fn riff_chunk(out: &mut Vec<u8>, fourcc: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(value: u32) -> [u8; 3] {
    let [a, b, c, _] = value.to_le_bytes();
    [a, b, c]
}

/// An animated WebP: each frame a lossless still (made with `image`'s encoder) of one solid
/// colour, its `VP8L` chunk wrapped in an `ANMF` chunk, inside `RIFF`/`VP8X` (animation
/// flag) with an `ANIM` chunk.
fn animated_webp(width: u32, height: u32, colors: &[[u8; 3]]) -> Vec<u8> {
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0]; // flags: animation; reserved
    vp8x.extend_from_slice(&u24(width - 1));
    vp8x.extend_from_slice(&u24(height - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    riff_chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]); // background, loop forever
    for color in colors {
        let still = RgbImage::from_pixel(width, height, Rgb(*color));
        let mut encoded = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut encoded)
            .write_image(
                still.as_raw(),
                width,
                height,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        assert_eq!(&encoded[12..16], b"VP8L", "a simple lossless WebP");
        let mut frame = Vec::new();
        frame.extend_from_slice(&u24(0)); // x / 2
        frame.extend_from_slice(&u24(0)); // y / 2
        frame.extend_from_slice(&u24(width - 1));
        frame.extend_from_slice(&u24(height - 1));
        frame.extend_from_slice(&u24(100)); // duration, ms
        frame.push(0b10); // do not blend, no disposal
        frame.extend_from_slice(&encoded[12..]); // the VP8L chunk as it is
        riff_chunk(&mut body, b"ANMF", &frame);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A GIF of `frames` 1x1 frames written by hand (header, screen, 2-colour table, then a
/// graphic control extension and an image per frame, trailer): a frame bomb costs 23 bytes a
/// frame.
fn one_pixel_frames(frames: usize) -> Vec<u8> {
    let mut gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\0\0\0\xff\xff\xff".to_vec();
    for _ in 0..frames {
        gif.extend_from_slice(b"\x21\xF9\x04\x00\x0A\x00\x00\x00");
        gif.extend_from_slice(b"\x2C\0\0\0\0\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00");
    }
    gif.push(0x3B);
    gif
}

#[test]
fn animated_gif_thumbnails_show_the_first_frame() {
    let input = gif(300, 200, &[RED, GREEN, BLUE]);
    assert_eq!(frame_count(&input, ImageFormat::Gif, 1000), Ok(3));
    let thumbs = thumbnails(&input);
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 107), ("w320", 300, 200), ("w640", 300, 200)]
    );
    assert_colour(&thumbs, RED);
    // The first frame decides whatever the others are.
    assert_colour(&thumbnails(&gif(300, 200, &[BLUE, RED, GREEN])), BLUE);
}

#[test]
fn animated_webp_thumbnails_show_the_first_frame() {
    let input = animated_webp(240, 160, &[GREEN, RED, BLUE]);
    assert_eq!(frame_count(&input, ImageFormat::Webp, 1000), Ok(3));
    let thumbs = thumbnails(&input);
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 107), ("w320", 240, 160), ("w640", 240, 160)]
    );
    assert!(thumbs.iter().all(|t| t.format == ImageFormat::Jpeg));
    assert_colour(&thumbs, GREEN);
    assert_colour(&thumbnails(&animated_webp(240, 160, &[BLUE, GREEN])), BLUE);
}

#[test]
fn stills_are_one_frame() {
    let rgba = RgbaImage::from_fn(40, 30, |x, y| Rgba([x as u8, y as u8, 1, 255]));
    assert_eq!(frame_count(&webp(&rgba), ImageFormat::Webp, 0), Ok(1));
    assert_eq!(frame_count(&png_rgba(&rgba), ImageFormat::Png, 0), Ok(1));
    assert_eq!(
        frame_count(&jpeg(&photo(40, 30), 80, None, false), ImageFormat::Jpeg, 0),
        Ok(1)
    );
    assert_eq!(
        frame_count(&gif(40, 30, &[RED]), ImageFormat::Gif, 0),
        Ok(1)
    );
    // A one-frame limit takes every still.
    let limits = Limits {
        max_frames: 1,
        ..Limits::default()
    };
    let spec = ThumbnailSpec::default();
    assert!(make_thumbnails(&gif(40, 30, &[RED]), &spec, &limits).is_ok());
    assert!(make_thumbnails(&webp(&rgba), &spec, &limits).is_ok());
}

#[test]
fn gif_frame_bombs_are_refused_from_the_structure() {
    let limits = Limits::default();
    assert_eq!(limits.max_frames, 1000);
    let limit = Limits::DEFAULT_MAX_FRAMES as usize;
    // Exactly at the limit is fine; one more is refused.
    assert_eq!(thumbnails(&one_pixel_frames(limit)).len(), 3);
    let error = assert_input_error(&one_pixel_frames(limit + 1), &limits);
    assert_eq!(
        error,
        ImagingError::TooManyFrames {
            frames_at_least: 1001,
            limit: 1000
        }
    );
    assert_eq!(error.kind(), "too_many_frames");
    assert!(
        error
            .to_string()
            .contains("more than the limit of 1000 frames"),
        "{error}"
    );
    // A million frames (23 MB): counting stops just past the limit.
    let bomb = one_pixel_frames(1_000_000);
    let started = Instant::now();
    assert_eq!(frame_count(&bomb, ImageFormat::Gif, 1000), Ok(1001));
    let error = assert_input_error(&bomb, &limits);
    assert!(
        matches!(
            error,
            ImagingError::TooManyFrames {
                frames_at_least: 1001,
                limit: 1000
            }
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Made by a real encoder, with a configured limit.
    let limits = Limits {
        max_frames: 2,
        ..Limits::default()
    };
    assert!(matches!(
        assert_input_error(&gif(64, 64, &[RED, GREEN, BLUE]), &limits),
        ImagingError::TooManyFrames {
            frames_at_least: 3,
            limit: 2
        }
    ));
}

#[test]
fn webp_frame_bombs_are_refused_from_the_structure() {
    let limits = Limits {
        max_frames: 4,
        ..Limits::default()
    };
    let spec = ThumbnailSpec::default();
    assert!(make_thumbnails(&animated_webp(16, 16, &[RED; 4]), &spec, &limits).is_ok());
    assert_eq!(
        assert_input_error(&animated_webp(16, 16, &[RED; 5]), &limits),
        ImagingError::TooManyFrames {
            frames_at_least: 5,
            limit: 4
        }
    );
    // Over the default limit.
    let bomb = animated_webp(2, 2, &[BLUE; 1001]);
    assert_eq!(
        assert_input_error(&bomb, &Limits::default()),
        ImagingError::TooManyFrames {
            frames_at_least: 1001,
            limit: 1000
        }
    );
}

#[test]
fn truncated_and_broken_animations_fail_cleanly() {
    let spec = ThumbnailSpec {
        sizes: vec![40, 20],
        jpeg_quality: 80,
    };
    let limits = Limits::default();
    for sample in [
        gif(48, 32, &[RED, GREEN, BLUE]),
        animated_webp(48, 32, &[RED, GREEN, BLUE]),
        one_pixel_frames(5),
    ] {
        for len in 0..sample.len() {
            let cut = &sample[..len];
            if let Ok(format) = probe(cut).map(|p| p.format) {
                let _ = frame_count(cut, format, 2);
            }
            if let Err(error) = make_thumbnails(cut, &spec, &limits) {
                assert!(
                    error.is_permanent() && error.is_input_error(),
                    "{len}: {error:?}"
                );
            }
        }
    }
    // An animated WebP without any frame, and a GIF with an unknown block.
    let mut no_frames = animated_webp(8, 8, &[]);
    assert!(matches!(
        assert_input_error(&no_frames, &limits),
        ImagingError::Corrupt(_)
    ));
    no_frames.truncate(no_frames.len() - 3);
    assert_input_error(&no_frames, &limits);
    let mut garbage = one_pixel_frames(2);
    garbage.pop();
    garbage.push(0x99);
    assert!(matches!(
        assert_input_error(&garbage, &limits),
        ImagingError::Corrupt(_)
    ));
}

// ---------------------------------------------------------------- orientation, sizes

#[test]
fn exif_orientation_is_applied() {
    // Stored 800x400 with red on the left; orientation 6 = rotate 90° clockwise to display,
    // so it is shown 400x800 with red on top.
    let input = jpeg(&halves(800, 400), 90, Some(&exif_orientation(6)), false);
    let probed = probe(&input).unwrap();
    assert_eq!(
        (probed.width, probed.height),
        (800, 400),
        "probe reports stored size"
    );
    // ... and the displayed size, which the catalog records: the same turn as the thumbnails.
    assert_eq!(probed.orientation, 6);
    assert_eq!(probed.displayed(), (400, 800));
    for (orientation, displayed) in [
        (1, (800, 400)),
        (3, (800, 400)),
        (5, (400, 800)),
        (8, (400, 800)),
    ] {
        let input = jpeg(
            &halves(800, 400),
            90,
            Some(&exif_orientation(orientation)),
            false,
        );
        assert_eq!(
            probe(&input).unwrap().displayed(),
            displayed,
            "orientation {orientation}"
        );
    }
    let plain = jpeg(&halves(800, 400), 90, None, false);
    assert_eq!(probe(&plain).unwrap().orientation, 1);
    let thumbs = thumbnails(&input);
    assert_eq!(
        sizes(&thumbs),
        [("w160", 80, 160), ("w320", 160, 320), ("w640", 320, 640)]
    );
    for thumb in &thumbs {
        let (w, h, pixels) = decode_jpeg(&thumb.bytes);
        let at = |x: u32, y: u32| {
            let i = ((y * w + x) * 3) as usize;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        let top = at(w / 2, h / 8);
        let bottom = at(w / 2, h * 7 / 8);
        assert!(
            top[0] > 150 && top[2] < 80,
            "{}: top is red: {top:?}",
            thumb.name
        );
        assert!(
            bottom[2] > 150 && bottom[0] < 80,
            "{}: bottom is blue: {bottom:?}",
            thumb.name
        );
    }
}

#[test]
fn exif_orientation_3_turns_the_image_upside_down() {
    // Rotate 180: red (left) ends up on the right; dimensions unchanged.
    let input = jpeg(&halves(600, 300), 90, Some(&exif_orientation(3)), false);
    let thumbs = thumbnails(&input);
    assert_eq!(sizes(&thumbs)[0], ("w160", 160, 80));
    let (w, h, pixels) = decode_jpeg(&thumbs[0].bytes);
    let right = ((h / 2 * w + w - 5) * 3) as usize;
    assert!(pixels[right] > 150 && pixels[right + 2] < 80);
}

#[test]
fn tiny_input_is_never_upscaled_but_every_size_gets_a_variant() {
    let thumbs = thumbnails(&jpeg(&photo(100, 50), 90, None, false));
    assert_eq!(
        sizes(&thumbs),
        [("w160", 100, 50), ("w320", 100, 50), ("w640", 100, 50)]
    );
    let thumbs = thumbnails(&png_rgb(&photo(1, 1)));
    assert_eq!(sizes(&thumbs)[2], ("w640", 1, 1));
}

#[test]
fn between_sizes_only_the_larger_ones_keep_the_original_size() {
    let thumbs = thumbnails(&jpeg(&photo(500, 250), 90, None, false));
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 80), ("w320", 320, 160), ("w640", 500, 250)]
    );
}

#[test]
fn extreme_aspect_ratios_keep_at_least_one_pixel() {
    let thumbs = thumbnails(&png_rgb(&photo(3000, 2)));
    assert_eq!(
        sizes(&thumbs),
        [("w160", 160, 1), ("w320", 320, 1), ("w640", 640, 1)]
    );
    let thumbs = thumbnails(&png_rgb(&photo(1000, 333)));
    assert_eq!(sizes(&thumbs)[2], ("w640", 640, 213));
}

#[test]
fn custom_sizes_come_back_in_configured_order() {
    let spec = ThumbnailSpec {
        sizes: vec![300, 100],
        jpeg_quality: 70,
    };
    let thumbs = make_thumbnails(
        &jpeg(&photo(600, 600), 90, None, false),
        &spec,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(sizes(&thumbs), [("w300", 300, 300), ("w100", 100, 100)]);
}

#[test]
fn invalid_specs_are_refused() {
    let input = jpeg(&photo(64, 64), 90, None, false);
    for (sizes, quality) in [
        (vec![], 80),
        (vec![0], 80),
        (vec![160, 160], 80),
        (vec![160], 0),
    ] {
        let spec = ThumbnailSpec {
            sizes,
            jpeg_quality: quality,
        };
        let error = make_thumbnails(&input, &spec, &Limits::default()).unwrap_err();
        assert!(matches!(error, ImagingError::InvalidSpec(_)), "{error}");
        assert!(!error.is_input_error());
    }
    assert_eq!(
        ThumbnailSpec::parse_sizes(" 160, 320,640 ").unwrap(),
        [160, 320, 640]
    );
    assert!(ThumbnailSpec::parse_sizes("160,big").is_err());
    assert!(ThumbnailSpec::parse_sizes("").is_err());
}

// ---------------------------------------------------------------- probe

#[test]
fn probe_reads_dimensions_from_a_prefix_of_every_format() {
    let rgba = RgbaImage::from_fn(321, 123, |x, y| Rgba([x as u8, y as u8, 1, 200]));
    let rgb = photo(321, 123);
    // A large EXIF segment pushes a JPEG's frame header back by 30 KB.
    let mut big_exif = exif_orientation(1);
    big_exif.resize(30_000, 0);
    let cases = [
        (ImageFormat::Jpeg, jpeg(&rgb, 90, None, false)),
        (ImageFormat::Jpeg, jpeg(&rgb, 90, Some(&big_exif), true)),
        (ImageFormat::Png, png_rgba(&rgba)),
        (ImageFormat::Webp, webp(&rgba)),
        (ImageFormat::Gif, gif(321, 123, &[[1, 2, 3]])),
    ];
    for (format, bytes) in cases {
        let mut answered_at = None;
        for len in 0..=bytes.len() {
            match probe(&bytes[..len]) {
                Err(ImagingError::NeedMoreData) => {
                    assert!(
                        answered_at.is_none(),
                        "{format}: NeedMoreData after an answer"
                    );
                }
                Ok(p) => {
                    assert_eq!((p.format, p.width, p.height), (format, 321, 123));
                    answered_at.get_or_insert(len);
                }
                Err(other) => panic!("{format}: prefix of {len} bytes: {other}"),
            }
        }
        let at = answered_at.unwrap();
        assert!(at < 31_000, "{format}: needed {at} bytes");
    }
}

#[test]
fn probe_refuses_what_is_not_an_image() {
    for input in [
        &b"<svg xmlns='http://www.w3.org/2000/svg'/>"[..],
        b"%PDF-1.7 ....",
        b"RIFF\0\0\0\0WAVEfmt ",
    ] {
        let error = probe(input).unwrap_err();
        assert!(matches!(error, ImagingError::Unsupported(_)), "{error}");
        assert!(error.is_permanent());
    }
    assert_eq!(probe(b"").unwrap_err(), ImagingError::NeedMoreData);
    assert_eq!(probe(b"\xFF\xD8").unwrap_err(), ImagingError::NeedMoreData);
    let zero = png_declaring(0, 10, 0);
    assert!(matches!(
        probe(&zero).unwrap_err(),
        ImagingError::Corrupt(_)
    ));
}

// ---------------------------------------------------------------- hostile input

fn assert_input_error(input: &[u8], limits: &Limits) -> ImagingError {
    let started = Instant::now();
    let error = make_thumbnails(input, &ThumbnailSpec::default(), limits).unwrap_err();
    assert!(error.is_permanent() && error.is_input_error(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{error}: took {:?}",
        started.elapsed()
    );
    error
}

#[test]
fn zero_bytes_and_garbage_fail_cleanly() {
    let limits = Limits::default();
    assert!(matches!(
        assert_input_error(b"", &limits),
        ImagingError::Corrupt(_)
    ));
    assert!(matches!(
        assert_input_error(b"hello world, not an image", &limits),
        ImagingError::Unsupported(_)
    ));
    // Random bytes behind a JPEG signature.
    let mut state = 0x1234_5678_u64;
    let mut garbage = b"\xFF\xD8\xFF\xE0".to_vec();
    garbage.extend((0..50_000).map(|_| next(&mut state) as u8));
    assert_input_error(&garbage, &limits);
    // Only the signature.
    assert!(matches!(
        assert_input_error(b"\xFF\xD8\xFF", &limits),
        ImagingError::Truncated(_)
    ));
    assert!(matches!(
        assert_input_error(b"\x89PNG\r\n\x1a\n", &limits),
        ImagingError::Truncated(_)
    ));
}

#[test]
fn png_bombs_are_refused_from_the_header() {
    let limits = Limits::default();
    // A tiny file declaring 100000x100000.
    let error = assert_input_error(&png_declaring(100_000, 100_000, 1), &limits);
    assert_eq!(
        error,
        ImagingError::TooManyPixels {
            width: 100_000,
            height: 100_000,
            max: 50_000_000
        }
    );
    // 20000x20000 of zeros: KBs on disk, 400 MB of pixels.
    let bomb = png_declaring(20_000, 20_000, 200);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    assert!(matches!(
        assert_input_error(&bomb, &limits),
        ImagingError::TooManyPixels { .. }
    ));
    // Under the pixel limit but over the allocation limit (7000x7000 RGBA would be 196 MB).
    let rgba_bomb = {
        let mut png = png_declaring(7_000, 7_000, 10);
        png[8 + 8 + 9] = 6; // IHDR colour type: RGBA
        let crc = crc32fast::hash(&png[12..12 + 4 + 13]);
        png[12 + 4 + 13..12 + 4 + 13 + 4].copy_from_slice(&crc.to_be_bytes());
        png
    };
    assert_eq!(
        assert_input_error(&rgba_bomb, &limits),
        ImagingError::MemoryLimit {
            max: Limits::DEFAULT_MAX_ALLOC_BYTES
        }
    );
}

#[test]
fn a_highly_compressible_image_within_the_limits_still_works() {
    // 6000x6000 of one colour compresses to a few KB and is a legitimate 36 MP image.
    let bomb = png_declaring(6_000, 6_000, 6_000);
    assert!(bomb.len() < 200 * 1024);
    let thumbs = thumbnails(&bomb);
    assert_eq!(sizes(&thumbs)[2], ("w640", 640, 640));
}

#[test]
fn byte_limit_is_checked_first() {
    let input = jpeg(&photo(300, 300), 90, None, false);
    let limits = Limits {
        max_input_bytes: 100,
        ..Limits::default()
    };
    assert_eq!(
        assert_input_error(&input, &limits),
        ImagingError::TooLarge {
            bytes: input.len() as u64,
            max: 100
        }
    );
}

#[test]
fn pixel_limit_applies_to_every_format() {
    let limits = Limits {
        max_pixels: 10_000,
        ..Limits::default()
    };
    let rgba = RgbaImage::from_fn(200, 200, |_, _| Rgba([1, 2, 3, 4]));
    for input in [
        jpeg(&photo(200, 200), 90, None, false),
        png_rgba(&rgba),
        webp(&rgba),
        gif(200, 200, &[[1, 2, 3]]),
    ] {
        assert!(matches!(
            assert_input_error(&input, &limits),
            ImagingError::TooManyPixels {
                width: 200,
                height: 200,
                max: 10_000
            }
        ));
    }
}

/// xorshift64: deterministic pseudo-random numbers without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    let rgba = RgbaImage::from_fn(96, 64, |x, y| {
        Rgba([x as u8 * 2, y as u8 * 3, 77, (x + y) as u8])
    });
    let rgb = photo(96, 64);
    let mut exif = exif_orientation(6);
    exif.resize(64, 0);
    let samples = [
        jpeg(&rgb, 90, Some(&exif), false),
        jpeg(&rgb, 90, None, true),
        png_rgba(&rgba),
        webp(&rgba),
        gif(96, 64, &[[1, 2, 3], [4, 5, 6]]),
    ];
    let spec = ThumbnailSpec {
        sizes: vec![40, 20],
        jpeg_quality: 80,
    };
    let limits = Limits::default();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for sample in &samples {
        // Every truncation point in the header area, then a spread over the rest.
        let step = (sample.len() / 200).max(1);
        for len in (0..sample.len().min(400)).chain((400..sample.len()).step_by(step)) {
            if let Err(error) = make_thumbnails(&sample[..len], &spec, &limits) {
                assert!(error.is_permanent(), "{error:?}");
            }
        }
        for _ in 0..400 {
            let mut mutated = sample.clone();
            for _ in 0..1 + next(&mut state) % 4 {
                let at = (next(&mut state) % mutated.len() as u64) as usize;
                mutated[at] ^= 1 << (next(&mut state) % 8);
            }
            if let Ok(thumbs) = make_thumbnails(&mutated, &spec, &limits) {
                assert_eq!(thumbs.len(), 2);
            }
        }
    }
}

#[test]
fn random_buffers_behind_every_signature_fail_cleanly() {
    let mut state = 42_u64;
    for signature in [
        &b"\xFF\xD8\xFF"[..],
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\x00\x10\x00\x00WEBPVP8X",
    ] {
        for len in [0usize, 1, 16, 100, 5_000] {
            let mut input = signature.to_vec();
            input.extend((0..len).map(|_| next(&mut state) as u8));
            let _ = make_thumbnails(&input, &ThumbnailSpec::default(), &Limits::default());
            let _ = probe(&input);
        }
    }
}
