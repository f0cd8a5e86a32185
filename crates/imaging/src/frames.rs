//! Cheap frame counting: walks a GIF's block structure or a WebP's RIFF chunks without
//! decompressing any pixel data, so an animation with a huge number of frames (a "frame bomb")
//! is refused before the decoder sees it.
//!
//! The pipeline only ever decodes the first frame of an animated image (the `image` crate's GIF
//! and WebP decoders read one frame into a `DynamicImage`); the count exists to refuse files
//! that are mostly frames, and to reject broken structure with a clear reason.

use crate::{ImageFormat, ImagingError};

/// The number of frames in `input`, counting at most `stop_after + 1` of them: a result greater
/// than `stop_after` means "at least that many", so a frame bomb costs at most `stop_after + 1`
/// frames' worth of header walking (plus skipping the data sub-blocks or chunks in between,
/// never decompressing them).
///
/// JPEG and PNG count as one frame (an APNG's extra frames are never decoded: the decoder reads
/// its default image). A WebP counts its `ANMF` chunks when its `VP8X` header has the animation
/// flag, and is one frame otherwise. A GIF counts its image descriptors.
///
/// Errors: [`ImagingError::Truncated`] when the structure ends inside a block or chunk,
/// [`ImagingError::Corrupt`] for an unknown GIF block, an animated WebP without frames or a GIF
/// without an image.
pub fn frame_count(
    input: &[u8],
    format: ImageFormat,
    stop_after: u32,
) -> Result<u32, ImagingError> {
    match format {
        ImageFormat::Jpeg | ImageFormat::Png => Ok(1),
        ImageFormat::Gif => gif_frames(input, stop_after),
        ImageFormat::Webp => webp_frames(input, stop_after),
    }
}

/// A forward-only reader over the input that reports running out as a truncated file.
struct Cursor<'a> {
    input: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, inside: &str) -> ImagingError {
        ImagingError::Truncated(format!(
            "the {} file ends inside {inside} (at byte {})",
            self.what, self.at
        ))
    }

    fn at_end(&self) -> bool {
        self.at >= self.input.len()
    }

    fn byte(&mut self, inside: &str) -> Result<u8, ImagingError> {
        let Some(&byte) = self.input.get(self.at) else {
            return Err(self.truncated(inside));
        };
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: usize, inside: &str) -> Result<&'a [u8], ImagingError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.input.len())
            .ok_or_else(|| self.truncated(inside))?;
        let bytes = &self.input[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    /// GIF data sub-blocks: a length byte and that many bytes, until a zero length.
    fn skip_sub_blocks(&mut self, inside: &str) -> Result<(), ImagingError> {
        loop {
            let len = self.byte(inside)?;
            if len == 0 {
                return Ok(());
            }
            self.take(usize::from(len), inside)?;
        }
    }
}

/// Bytes of a GIF colour table whose packed field is `packed` (flag in bit 7, size in bits 0-2).
fn colour_table_len(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 0x07) + 1)
    }
}

fn gif_frames(input: &[u8], stop_after: u32) -> Result<u32, ImagingError> {
    let mut cursor = Cursor {
        input,
        at: 0,
        what: "GIF",
    };
    let signature = cursor.take(6, "the header")?;
    if signature != b"GIF87a" && signature != b"GIF89a" {
        return Err(ImagingError::Corrupt("not a GIF header".into()));
    }
    let screen = cursor.take(7, "the logical screen descriptor")?;
    cursor.take(colour_table_len(screen[4]), "the global colour table")?;
    let mut frames = 0u32;
    loop {
        // Many encoders omit the trailer: the end of the file between blocks ends the stream.
        if cursor.at_end() {
            break;
        }
        match cursor.byte("a block")? {
            0x21 => {
                cursor.byte("an extension label")?;
                cursor.skip_sub_blocks("an extension")?;
            }
            0x2C => {
                let descriptor = cursor.take(9, "an image descriptor")?;
                frames += 1;
                if frames > stop_after {
                    return Ok(frames);
                }
                cursor.take(colour_table_len(descriptor[8]), "a local colour table")?;
                cursor.byte("the image data")?; // LZW minimum code size
                cursor.skip_sub_blocks("the image data")?;
            }
            0x3B => break,
            other => {
                return Err(ImagingError::Corrupt(format!(
                    "unknown GIF block 0x{other:02X} at byte {}",
                    cursor.at - 1
                )));
            }
        }
    }
    if frames == 0 {
        return Err(ImagingError::Corrupt("the GIF contains no image".into()));
    }
    Ok(frames)
}

/// A RIFF chunk's fourcc and payload size.
fn chunk_header(cursor: &mut Cursor<'_>) -> Result<([u8; 4], usize), ImagingError> {
    let header = cursor.take(8, "a chunk header")?;
    let fourcc = [header[0], header[1], header[2], header[3]];
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let size = usize::try_from(size).map_err(|_| cursor.truncated("a chunk"))?;
    Ok((fourcc, size))
}

/// `VP8X` flags: bit 1 says the file is an animation.
const VP8X_ANIMATION: u8 = 0x02;

fn webp_frames(input: &[u8], stop_after: u32) -> Result<u32, ImagingError> {
    let mut cursor = Cursor {
        input,
        at: 0,
        what: "WebP",
    };
    let (riff, riff_size) = chunk_header(&mut cursor)?;
    if &riff != b"RIFF" || cursor.take(4, "the RIFF header")? != b"WEBP" {
        return Err(ImagingError::Corrupt("not a RIFF/WEBP header".into()));
    }
    // Bytes after the RIFF's declared end are not part of the image.
    let end = riff_size.saturating_add(8).min(input.len());
    cursor.input = &input[..end];
    let (first, size) = chunk_header(&mut cursor)?;
    match &first {
        b"VP8 " | b"VP8L" => return Ok(1),
        b"VP8X" => {}
        other => {
            return Err(ImagingError::Corrupt(format!(
                "unknown first WebP chunk {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    }
    let header = cursor.take(size, "the VP8X chunk")?;
    let Some(&flags) = header.first() else {
        return Err(ImagingError::Corrupt("empty VP8X chunk".into()));
    };
    if flags & VP8X_ANIMATION == 0 {
        // A still extended image: the decoder reads its one VP8/VP8L chunk.
        return Ok(1);
    }
    cursor.take(size & 1, "the VP8X chunk")?;
    let mut frames = 0u32;
    while !cursor.at_end() {
        let (fourcc, size) = chunk_header(&mut cursor)?;
        if &fourcc == b"ANMF" {
            frames += 1;
            if frames > stop_after {
                return Ok(frames);
            }
        }
        // Chunks are padded to an even length.
        cursor.take(size.saturating_add(size & 1), "a chunk")?;
    }
    if frames == 0 {
        return Err(ImagingError::Corrupt(
            "the WebP is marked animated but has no frames".into(),
        ));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic 1x1 GIF: header, screen, 2-colour table, one frame, trailer.
    fn one_pixel_gif(frames: usize, trailer: bool) -> Vec<u8> {
        let mut gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\0\0\0\xff\xff\xff".to_vec();
        for _ in 0..frames {
            // Graphic control extension, then the image.
            gif.extend_from_slice(b"\x21\xF9\x04\x00\x0A\x00\x00\x00");
            gif.extend_from_slice(b"\x2C\0\0\0\0\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00");
        }
        if trailer {
            gif.push(0x3B);
        }
        gif
    }

    #[test]
    fn counts_gif_frames_and_stops_after_the_limit() {
        assert_eq!(
            frame_count(&one_pixel_gif(1, true), ImageFormat::Gif, 10),
            Ok(1)
        );
        assert_eq!(
            frame_count(&one_pixel_gif(7, true), ImageFormat::Gif, 10),
            Ok(7)
        );
        assert_eq!(
            frame_count(&one_pixel_gif(7, false), ImageFormat::Gif, 10),
            Ok(7)
        );
        assert_eq!(
            frame_count(&one_pixel_gif(50, true), ImageFormat::Gif, 10),
            Ok(11)
        );
    }

    #[test]
    fn broken_gif_structure_is_refused() {
        let gif = one_pixel_gif(2, true);
        // Every cut inside a block is truncated; cuts between blocks are a stream without
        // its trailer.
        for len in 0..gif.len() {
            match frame_count(&gif[..len], ImageFormat::Gif, 10) {
                Ok(frames) => assert!((1..=2).contains(&frames), "{len}: {frames}"),
                Err(error) => assert!(
                    matches!(error, ImagingError::Truncated(_) | ImagingError::Corrupt(_)),
                    "{len}: {error:?}"
                ),
            }
        }
        let mut garbage = one_pixel_gif(1, false);
        garbage.push(0x99);
        assert!(matches!(
            frame_count(&garbage, ImageFormat::Gif, 10),
            Err(ImagingError::Corrupt(_))
        ));
        assert!(matches!(
            frame_count(&one_pixel_gif(0, true), ImageFormat::Gif, 10),
            Err(ImagingError::Corrupt(_))
        ));
    }

    #[test]
    fn jpeg_and_png_are_one_frame() {
        assert_eq!(frame_count(b"\xFF\xD8\xFF", ImageFormat::Jpeg, 0), Ok(1));
        assert_eq!(frame_count(b"\x89PNG", ImageFormat::Png, 0), Ok(1));
    }
}
