//! Checking an upload's first bytes before anything is stored: the magic bytes must match the
//! declared type, and the header's dimensions must be within the pixel limit (header only, via
//! `storemesh_imaging::probe`; no pixel is decoded).

use futures::{Stream, StreamExt};
use storemesh_imaging::{ImagingError, Probe, SNIFF_LEN};
use storemesh_mesh_client::api::ApiError;

/// How far into the file the dimensions may be: a JPEG's SOF marker comes after its metadata
/// segments (EXIF, ICC profiles, embedded previews), which can take a few hundred KiB.
pub const HEADER_CAP: usize = 1024 * 1024;

/// Reads the body until the header tells format and dimensions, and checks them. Returns the
/// bytes read (to be stored first) and what the header says.
pub async fn read_header<S>(
    body: &mut S,
    declared: &str,
    length: u64,
    max_pixels: u64,
) -> Result<(Vec<u8>, Probe), ApiError>
where
    S: Stream<Item = Result<Vec<u8>, wasi::io::streams::Error>> + Unpin,
{
    let total = usize::try_from(length).unwrap_or(usize::MAX);
    let mut prefix = Vec::new();
    let mut ended = false;
    // Enough for the magic bytes first.
    while prefix.len() < SNIFF_LEN.min(total) && !ended {
        ended = read_more(body, &mut prefix).await?;
    }
    check_magic(&prefix, declared)?;
    loop {
        match storemesh_imaging::probe(&prefix) {
            Ok(probe) => {
                if probe.pixels() > max_pixels {
                    return Err(ApiError::new(
                        422,
                        "too_many_pixels",
                        format!(
                            "the image is {}x{} pixels, more than the limit of {max_pixels} pixels",
                            probe.width, probe.height
                        ),
                    ));
                }
                return Ok((prefix, probe));
            }
            Err(ImagingError::NeedMoreData) if !ended && prefix.len() < HEADER_CAP.min(total) => {
                ended = read_more(body, &mut prefix).await?;
            }
            Err(ImagingError::NeedMoreData) => {
                return Err(ApiError::new(
                    422,
                    "unreadable_header",
                    format!(
                        "the image dimensions were not found in the first {} bytes",
                        prefix.len()
                    ),
                ));
            }
            Err(error) => {
                return Err(ApiError::new(
                    422,
                    "unreadable_header",
                    format!("the image header cannot be read: {error}"),
                ));
            }
        }
    }
}

/// Appends the next read to `prefix`; `true` when the body ended.
async fn read_more<S>(body: &mut S, prefix: &mut Vec<u8>) -> Result<bool, ApiError>
where
    S: Stream<Item = Result<Vec<u8>, wasi::io::streams::Error>> + Unpin,
{
    match body.next().await {
        Some(Ok(bytes)) => {
            prefix.extend_from_slice(&bytes);
            Ok(false)
        }
        Some(Err(error)) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {}",
            error.to_debug_string()
        ))),
        None => Ok(true),
    }
}

/// The magic bytes against the declared type.
pub fn check_magic(prefix: &[u8], declared: &str) -> Result<(), ApiError> {
    match storemesh_imaging::sniff(prefix) {
        Some(format) if format.mime() == declared => Ok(()),
        Some(format) => Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!(
                "the body is {} but Content-Type says {declared}",
                format.mime()
            ),
        )),
        None => Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!(
                "the body is not a JPEG, PNG, WebP or GIF image (Content-Type says {declared})"
            ),
        )),
    }
}
