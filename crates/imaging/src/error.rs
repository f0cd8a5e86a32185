/// Why an image could not be probed or thumbnailed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImagingError {
    /// `probe` only: the prefix ends before the header says what it needs; read more bytes
    /// (up to a cap) and call again.
    #[error("more bytes are needed to read the image header")]
    NeedMoreData,
    /// Not one of JPEG, PNG, WebP, GIF, or a feature of one the decoders do not support.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The bytes are not a valid image of the format they claim.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The file ends before the image does.
    #[error("truncated image: {0}")]
    Truncated(String),
    /// The header declares more pixels than the limit (checked before decoding).
    #[error("the image is {width}x{height} pixels, more than the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    /// The encoded input is larger than the byte limit.
    #[error("the image is {bytes} bytes, more than the limit of {max} bytes")]
    TooLarge { bytes: u64, max: u64 },
    /// An animation with more frames than the frame limit (counted from the container's
    /// structure, before decoding; counting stops just past the limit, so `frames_at_least`
    /// is `limit + 1`).
    #[error(
        "the image is an animation of at least {frames_at_least} frames, more than the limit of {limit} frames (only the first frame is used for thumbnails)"
    )]
    TooManyFrames { frames_at_least: u32, limit: u32 },
    /// Decoding would need more memory than the allocation limit.
    #[error("decoding the image would need more than {max} bytes of memory")]
    MemoryLimit { max: u64 },
    /// The thumbnail configuration itself is wrong (not the image's fault).
    #[error("invalid thumbnail configuration: {0}")]
    InvalidSpec(String),
    /// Encoding a variant failed (not the image's fault).
    #[error("encoding a thumbnail failed: {0}")]
    Encode(String),
}

impl ImagingError {
    /// Whether trying again with the same input cannot succeed. Everything here is a pure
    /// function of the input and the configuration, so only [`ImagingError::NeedMoreData`]
    /// (which asks for a longer prefix) is worth another attempt.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::NeedMoreData)
    }

    /// Whether the image is at fault (reject the upload / mark the image failed), as opposed
    /// to the configuration or an internal failure.
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Self::InvalidSpec(_) | Self::Encode(_))
    }

    /// A stable machine-readable name, for JSON error bodies, logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NeedMoreData => "need_more_data",
            Self::Unsupported(_) => "unsupported",
            Self::Corrupt(_) => "corrupt",
            Self::Truncated(_) => "truncated",
            Self::TooManyPixels { .. } => "too_many_pixels",
            Self::TooLarge { .. } => "too_large",
            Self::TooManyFrames { .. } => "too_many_frames",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Encode(_) => "encode",
        }
    }

    /// Maps a decoder's I/O error: running out of input is a truncated file.
    pub(crate) fn from_io(error: &std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Truncated(error.to_string())
        } else {
            Self::Corrupt(error.to_string())
        }
    }

    pub(crate) fn from_image(error: image::ImageError, max_alloc: u64) -> Self {
        use image::ImageError as E;
        match error {
            E::Limits(_) => Self::MemoryLimit { max: max_alloc },
            E::Unsupported(e) => Self::Unsupported(e.to_string()),
            E::IoError(e) => Self::from_io(&e),
            E::Decoding(e) => {
                // Decoders wrap running out of input in a decoding error; keep it apart from
                // corrupt data so the message says what happened.
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(error) = source {
                    if let Some(io) = error.downcast_ref::<std::io::Error>() {
                        return Self::from_io(io);
                    }
                    source = error.source();
                }
                Self::Corrupt(e.to_string())
            }
            E::Parameter(e) => Self::Corrupt(e.to_string()),
            E::Encoding(e) => Self::Encode(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_need_more_data_is_worth_retrying() {
        assert!(!ImagingError::NeedMoreData.is_permanent());
        assert!(ImagingError::Corrupt("x".into()).is_permanent());
        assert!(ImagingError::TooLarge { bytes: 2, max: 1 }.is_permanent());
        assert!(ImagingError::Truncated("x".into()).is_input_error());
        assert!(!ImagingError::InvalidSpec("x".into()).is_input_error());
        let frames = ImagingError::TooManyFrames {
            frames_at_least: 1001,
            limit: 1000,
        };
        assert!(frames.is_permanent() && frames.is_input_error());
        assert_eq!(frames.kind(), "too_many_frames");
        assert!(
            frames
                .to_string()
                .contains("more than the limit of 1000 frames")
        );
    }
}
