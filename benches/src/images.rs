//! Test images for the benchmarks.

/// Gradients plus per-pixel noise: compresses like a photograph, not like a flat test card.
pub fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state & 0x1f) as u32;
            let fx = x * 255 / width;
            let fy = y * 255 / height;
            let ring = ((x as i64 - width as i64 / 2).pow(2)
                + (y as i64 - height as i64 / 3).pow(2))
            .unsigned_abs()
                / 4_000;
            pixels.push(((fx + noise) / 2 + (ring as u32 % 64)) as u8);
            pixels.push(((fy + noise) * 3 / 4) as u8);
            pixels.push((((fx + fy) / 2 + noise) % 256) as u8);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(
            &pixels,
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encoding an in-memory RGB buffer of valid dimensions cannot fail");
    out
}
