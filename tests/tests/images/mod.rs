//! Test images, made in memory: each format, EXIF orientation, alpha, and hostile files.
#![allow(dead_code)]

use std::io::{Cursor, Write};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

/// A smooth gradient (compresses like a photo, decodes deterministically).
fn gradient(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgb8(gradient(width, height)),
        ImageFormat::Jpeg,
    )
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgb8(gradient(width, height)),
        ImageFormat::Png,
    )
}

pub fn gif(width: u32, height: u32) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(gradient(width, height)).to_rgba8()),
        ImageFormat::Gif,
    )
}

/// Lossless WebP (the encoder `image` has).
pub fn webp(width: u32, height: u32) -> Vec<u8> {
    encode(
        DynamicImage::ImageRgb8(gradient(width, height)),
        ImageFormat::WebP,
    )
}

/// An RGBA PNG whose left half is transparent.
pub fn png_with_alpha(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        let alpha = if x < width / 2 { 0 } else { 255 };
        Rgba([(x % 256) as u8, (y % 256) as u8, 128, alpha])
    });
    encode(DynamicImage::ImageRgba8(image), ImageFormat::Png)
}

/// Random pixels: a PNG that barely compresses (for large uploads).
pub fn noisy_png(width: u32, height: u32) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let image = RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        Rgb([bytes[0], bytes[1], bytes[2]])
    });
    encode(DynamicImage::ImageRgb8(image), ImageFormat::Png)
}

/// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6): the stored
/// `width`×`height` pixels display as `height`×`width`.
pub fn jpeg_with_orientation(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let plain = jpeg(width, height);
    // APP1 "Exif\0\0" + a big-endian TIFF header with one IFD entry: 0x0112 SHORT 1 value.
    let mut exif = Vec::new();
    exif.extend_from_slice(b"Exif\0\0");
    exif.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    exif.extend_from_slice(&1_u16.to_be_bytes());
    exif.extend_from_slice(&0x0112_u16.to_be_bytes());
    exif.extend_from_slice(&3_u16.to_be_bytes());
    exif.extend_from_slice(&1_u32.to_be_bytes());
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(&0_u32.to_be_bytes());
    let mut out = Vec::with_capacity(plain.len() + exif.len() + 4);
    out.extend_from_slice(&plain[..2]); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(exif.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&plain[2..]);
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(kind);
    hasher.update(data);
    out.extend_from_slice(&hasher.finalize().to_be_bytes());
}

/// A PNG "bomb": the header declares `width`×`height` RGBA pixels and the (valid, tiny) zlib
/// data inflates to rows of zeros — a few hundred bytes that would decode to gigabytes.
pub fn png_bomb(width: u32, height: u32, rows: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, deflate, no filter, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let row = vec![0_u8; 1 + 4 * width as usize];
    for _ in 0..rows {
        encoder.write_all(&row).unwrap();
    }
    png_chunk(&mut out, b"IDAT", &encoder.finish().unwrap());
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Just enough PNG to declare `width`×`height` (for header-only checks).
pub fn png_bomb_header(width: u32, height: u32) -> Vec<u8> {
    png_bomb(width, height, 1)
}

/// JPEG magic bytes followed by pseudo-random garbage.
pub fn jpeg_magic_then_garbage(length: usize) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut state: u32 = 12345;
    while out.len() < length {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        out.push((state >> 16) as u8);
    }
    out
}

/// The first `keep` bytes of `bytes`.
pub fn truncated(bytes: &[u8], keep: usize) -> Vec<u8> {
    bytes[..keep.min(bytes.len())].to_vec()
}
